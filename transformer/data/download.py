"""Named corpora one command away, downloaded once into a cache.

    python -m transformer download multi30k     # Multi30k's six text files

`download_corpus(name)` fetches a named corpus (`CORPORA`) through `storage.fetch` (the
one downloader: `data.path` may itself be an `https://`, `gs://` or `s3://` URL) and
unpacks it into `~/.cache/transformer/downloads/<name>/` (TRANSFORMER_CACHE moves the
cache), where the shipped configs look when `../shared/data` does not hold it
(`local_or_downloaded`). A URL that does not answer, or answers with an error status, is
one line (`DataError`).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil

from transformer import storage
from transformer.errors import DataError, UserError

# name -> (where the files come from, {file in the cache folder: file at that URL}); '.gz'
# files are unpacked.
_MULTI30K = ('https://raw.githubusercontent.com/multi30k/dataset/'
             'a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/')
CORPORA: dict[str, tuple[str, dict[str, str]]] = {
    'multi30k': (_MULTI30K, {
        'train.en': 'train.en.gz', 'train.de': 'train.de.gz',
        'valid.en': 'val.en.gz', 'valid.de': 'val.de.gz',
        'test.en': 'test_2016_flickr.en.gz', 'test.de': 'test_2016_flickr.de.gz'}),
}


def corpus_folder(name: str) -> pathlib.Path:
  return storage.cache_root() / 'downloads' / name


def download_corpus(name: str) -> pathlib.Path:
  """Fetches corpus `name` (`CORPORA`) into `corpus_folder(name)`; returns the folder."""
  if name not in CORPORA:
    raise UserError(f'no corpus {name!r} to download; there are: {", ".join(sorted(CORPORA))}')
  base, files = CORPORA[name]
  folder = corpus_folder(name)
  folder.mkdir(parents=True, exist_ok=True)
  for local, remote in files.items():
    target = folder / local
    if target.is_file():
      continue
    fetched = storage.fetch(base + remote)
    scratch = folder / f'.{local}.part'
    try:
      opener = gzip.open if remote.endswith('.gz') else open
      with opener(fetched, 'rb') as src, open(scratch, 'wb') as out:
        shutil.copyfileobj(src, out)
    except (OSError, EOFError) as error:
      scratch.unlink(missing_ok=True)
      raise DataError(f'{base + remote} (cached as {fetched}) does not unpack: {error}; delete '
                      'it and run again') from None
    os.replace(scratch, target)
  return folder


def local_or_downloaded(local: str, name: str) -> str:
  """`local` where it exists, else the download cache's folder of corpus `name` (filled by
  `python -m transformer download NAME`)."""
  return local if pathlib.Path(local).exists() else str(corpus_folder(name))
