"""Hugging Face Hub model ids -> local folders, through `huggingface_hub`.

    folder = transformer.hf.hub.resolve('ORG/NAME')            # or 'ORG/NAME@REVISION'
    folder = transformer.hf.hub.resolve('path/to/hf-folder')   # a folder is itself

An id is fetched with `huggingface_hub.snapshot_download`, limited to the files we read
(`ALLOW_PATTERNS`: config, safetensors weights and their index, tokenizer files), into
huggingface_hub's own cache (`HF_HOME`, by default ~/.cache/huggingface: a second call, or
Transformers on the same machine, finds it there). huggingface_hub reads `HF_TOKEN` (private
and gated models) and `HF_HUB_OFFLINE` (the cache only, no network) itself. What goes wrong
(no such model, a model the cache lacks offline, no access) is one line (`UserError`).
"""

from __future__ import annotations

import os
import pathlib
import re

from transformer.errors import MissingFileError, UserError

# The files `transformer.hf.load` and the import's tokenizer read (no PyTorch weights).
ALLOW_PATTERNS = (
    'config.json', 'generation_config.json', '*.safetensors', 'model.safetensors.index.json',
    'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
    'source.spm', 'target.spm', 'vocab.json',   # Marian's tokenizer
)
_HUB_ID = re.compile(r'^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$')


def parse_id(name: str) -> tuple[str, str | None] | None:
  """('ORG/NAME', revision or None) when `name` reads as a Hub id, else None."""
  match = _HUB_ID.match(name)
  return (match['repo'], match['revision']) if match else None


def resolve(name: str | os.PathLike) -> pathlib.Path:
  """A local folder holding the model's files: `name` itself when it is a folder, else the
  Hub id's snapshot in huggingface_hub's cache (downloaded when not there yet)."""
  path = pathlib.Path(name)
  if path.is_dir():
    return path
  parsed = parse_id(str(name))
  if parsed is None or path.exists() or str(name).startswith(('.', '/', '~')):
    raise MissingFileError(f'no model folder {name} (a Hugging Face Hub id reads ORG/NAME '
                           'or ORG/NAME@REVISION)')
  return pathlib.Path(_download(*parsed))


def _download(repo_id: str, revision: str | None) -> str:
  try:
    import huggingface_hub
    from huggingface_hub import errors as hub_errors
  except ImportError:
    raise UserError(f'{repo_id} reads as a Hugging Face Hub id, which needs huggingface_hub: '
                    "pip install 'transformer[hub]' (or pass a model folder)") from None
  from huggingface_hub import constants
  where = f'{repo_id}@{revision}' if revision else repo_id
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision,
                                             allow_patterns=list(ALLOW_PATTERNS))
  except hub_errors.LocalEntryNotFoundError:
    if constants.HF_HUB_OFFLINE:
      raise UserError(f'{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) '
                      'and HF_HUB_OFFLINE is set: download it once online (unset '
                      'HF_HUB_OFFLINE), point HF_HOME at a cache that holds it, or pass a '
                      'model folder') from None
    raise UserError(f'{where}: the Hugging Face Hub cannot be reached and the cache '
                    f'({constants.HF_HUB_CACHE}) lacks it: check the network, or pass a model '
                    'folder') from None
  except hub_errors.IncompleteSnapshotError:
    raise UserError(f'{where}: the cached snapshot in {constants.HF_HUB_CACHE} is incomplete '
                    'and the Hub cannot be reached: download it again online') from None
  except hub_errors.RevisionNotFoundError:
    raise UserError(f'{repo_id} has no revision {revision!r} on the Hugging Face Hub') from None
  except hub_errors.GatedRepoError:
    raise UserError(f'{repo_id} is gated: accept its terms on the Hub and set HF_TOKEN to a '
                    'token of that account') from None
  except hub_errors.RepositoryNotFoundError:
    raise UserError(f'{repo_id}: no such model on the Hugging Face Hub (or it is private: '
                    'set HF_TOKEN)') from None
  except hub_errors.HfHubHTTPError as error:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(f'{where}: the Hugging Face Hub answered {first}') from None
