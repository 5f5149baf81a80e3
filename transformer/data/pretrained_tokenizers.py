"""The tokenizers of imported Hugging Face checkpoints, behind our tokenizer interface
(see `transformer.data.tokenizers`): their own special ids, which differ from ours.

- `HuggingFaceTokenizer`: a `tokenizer.json` of Hugging Face's Rust `tokenizers` (GPT-2's
  byte-level BPE, BERT's WordPiece, Llama's and Qwen2's BPE), read without transformers.
- `MarianTokenizer`: Opus-MT's pair of SentencePiece models and shared vocabulary: the
  source model splits the input, the target model joins the output, and vocab.json maps
  pieces to the model's ids ('</s>' eos, '<unk>', '<pad>'; decoding starts from
  config.json's decoder_start_token_id, the pad id, exposed here as `bos_id`).

`from_folder(hf_folder)` reads a model folder's files and its ids (tokenizer_config.json,
special_tokens_map.json, then config.json); `save(directory)` writes a folder that
`transformer.data.tokenizers.load_tokenizer` reads back. An id the vocabulary lacks is None
(GPT-2 has no pad; Marian has no mask).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Any, Sequence

from transformer.errors import ConfigError, MissingFileError

_SPECIALS = ('bos_id', 'eos_id', 'pad_id', 'unk_id', 'mask_id')
HF_TOKENIZER_FILE = 'hf_tokenizer.json'   # ours is tokenizer.json, the type record
MARIAN_FILES = ('source.spm', 'target.spm', 'vocab.json')
_LANGUAGE_CODE = re.compile(r'>>[^<>\s]+<<')


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(directory: pathlib.Path, kind: str, ids: dict[str, int | None]) -> None:
  record = {'type': kind, **ids}
  (directory / 'tokenizer.json').write_text(json.dumps(record, indent=1) + '\n')


def _cut(ids: Sequence[int], eos_id: int | None) -> list[int]:
  ids = [int(i) for i in ids]
  return ids[:ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizers` tokenizer with the checkpoint's special ids."""

  def __init__(self, path: str | os.PathLike, *, bos_id: int | None = None,
               eos_id: int | None = None, pad_id: int | None = None,
               unk_id: int | None = None, mask_id: int | None = None):
    import tokenizers
    self.path = pathlib.Path(path)
    self._tok = tokenizers.Tokenizer.from_file(str(self.path))
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.unk_id, self.mask_id = unk_id, mask_id

  @classmethod
  def from_folder(cls, folder: str | os.PathLike) -> HuggingFaceTokenizer:
    """The folder's tokenizer.json with the ids its configs name. BERT's [CLS] and [SEP]
    serve as bos and eos, which is where our pipeline puts them."""
    folder = pathlib.Path(folder)
    if not (folder / 'tokenizer.json').is_file():
      raise MissingFileError(f'{folder} has no tokenizer.json (a Hugging Face "fast" '
                             'tokenizer): save one there with transformers\' '
                             'AutoTokenizer.from_pretrained(...).save_pretrained(...)')
    tokens = {**_read_json(folder / 'special_tokens_map.json'),
              **_read_json(folder / 'tokenizer_config.json')}
    model = _read_json(folder / 'config.json')
    tok = cls(folder / 'tokenizer.json')

    def token(key, config_key=None):
      if key in tokens:
        value = tokens[key]
        value = value.get('content') if isinstance(value, dict) else value
        return None if value is None else tok._tok.token_to_id(value)
      value = model.get(config_key) if config_key else None
      value = value[0] if isinstance(value, list) and value else value
      return value if isinstance(value, int) else None

    bos = token('bos_token', 'bos_token_id')
    eos = token('eos_token', 'eos_token_id')
    tok.bos_id = bos if bos is not None else token('cls_token')
    tok.eos_id = eos if eos is not None else token('sep_token')
    tok.pad_id, tok.unk_id = token('pad_token', 'pad_token_id'), token('unk_token')
    tok.mask_id = token('mask_token')
    return tok

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    """Up to the first eos, without special tokens (and ids beyond the tokenizer's
    vocabulary, which models pad theirs with)."""
    ids = [i for i in _cut(ids, self.eos_id) if 0 <= i < self.vocab_size]
    return self._tok.decode(ids, skip_special_tokens=True)

  def save(self, directory: str | os.PathLike) -> None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / HF_TOKENIZER_FILE).resolve() != self.path.resolve():
      shutil.copyfile(self.path, directory / HF_TOKENIZER_FILE)
    _write_record(directory, 'huggingface', {k: getattr(self, k) for k in _SPECIALS})

  def __repr__(self) -> str:
    return f'HuggingFaceTokenizer({self.path}, vocab_size={self.vocab_size})'


class MarianTokenizer:
  """Opus-MT's tokenizer: source.spm splits, target.spm joins, vocab.json numbers the
  pieces. A leading language code such as '>>fra<<' (multilingual targets) is one token."""

  def __init__(self, directory: str | os.PathLike, *, bos_id: int | None = None):
    import sentencepiece as spm
    self.directory = pathlib.Path(directory)
    missing = [f for f in MARIAN_FILES if not (self.directory / f).is_file()]
    if missing:
      raise MissingFileError(f'{self.directory} lacks {", ".join(missing)} (Marian\'s '
                             'tokenizer files)')
    self.vocab = json.loads((self.directory / 'vocab.json').read_text())
    self._pieces = {i: piece for piece, i in self.vocab.items()}
    self._source = spm.SentencePieceProcessor(model_file=str(self.directory / 'source.spm'))
    self._target = spm.SentencePieceProcessor(model_file=str(self.directory / 'target.spm'))
    self.vocab_size = max(self.vocab.values()) + 1
    self.eos_id, self.unk_id = self.vocab.get('</s>'), self.vocab.get('<unk>')
    self.pad_id, self.mask_id = self.vocab.get('<pad>'), None
    self.bos_id = self.pad_id if bos_id is None else bos_id
    if self.unk_id is None or self.eos_id is None:
      raise ConfigError(f'{self.directory}/vocab.json lacks <unk> or </s>')

  @classmethod
  def from_folder(cls, folder: str | os.PathLike) -> MarianTokenizer:
    folder = pathlib.Path(folder)
    if _read_json(folder / 'tokenizer_config.json').get('separate_vocabs'):
      raise ConfigError(f'{folder}: separate source and target vocabularies '
                        '(separate_vocabs) are not supported')
    start = _read_json(folder / 'config.json').get('decoder_start_token_id')
    return cls(folder, bos_id=start if isinstance(start, int) else None)

  def encode(self, text: str) -> list[int]:
    code = _LANGUAGE_CODE.match(text)
    pieces = [code.group()] if code else []
    pieces += self._source.encode(text[code.end():] if code else text, out_type=str)
    return [self.vocab.get(p, self.unk_id) for p in pieces]

  def decode(self, ids: Sequence[int]) -> str:
    """Up to the first eos, special tokens dropped, joined by the target model."""
    specials = {self.eos_id, self.pad_id, self.bos_id, self.unk_id}
    pieces = [self._pieces[i] for i in _cut(ids, self.eos_id)
              if i in self._pieces and i not in specials]
    return self._target.decode_pieces(pieces).replace('\u2581', ' ').strip()

  def save(self, directory: str | os.PathLike) -> None:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in MARIAN_FILES:
      if (directory / name).resolve() != (self.directory / name).resolve():
        shutil.copyfile(self.directory / name, directory / name)
    _write_record(directory, 'marian', {'bos_id': self.bos_id})

  def __repr__(self) -> str:
    return f'MarianTokenizer({self.directory}, vocab_size={self.vocab_size})'


def from_hf_folder(folder: str | os.PathLike) -> HuggingFaceTokenizer | MarianTokenizer:
  """The tokenizer a Hugging Face model folder ships: Marian's files, else tokenizer.json."""
  folder = pathlib.Path(folder)
  if all((folder / f).is_file() for f in MARIAN_FILES):
    return MarianTokenizer.from_folder(folder)
  return HuggingFaceTokenizer.from_folder(folder)


def load(directory: pathlib.Path, record: dict[str, Any]):
  """A tokenizer saved by one of the classes above (`record`: its tokenizer.json)."""
  if record['type'] == 'huggingface':
    return HuggingFaceTokenizer(directory / HF_TOKENIZER_FILE,
                                **{k: record.get(k) for k in _SPECIALS})
  return MarianTokenizer(directory, bos_id=record.get('bos_id'))
