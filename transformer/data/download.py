"""Named corpora one command away, downloaded once into a cache.

    python -m transformer download multi30k                    # Multi30k's six text files
    path = cached_download('https://example.org/input.txt')   # ~/.cache/transformer/downloads/...

(`data.path` itself may be an `https://`, `gs://` or `s3://` URL: `transformer.storage`
fetches such a corpus once per version of it.)

Each URL is fetched once into `CACHE_DIR/<hash of the URL>/<its file name>` (the variable
TRANSFORMER_CACHE moves the whole cache), through a temporary file renamed at the end, so an
interrupted download leaves nothing that a later run would take for the file; a progress
bar shows on stderr. A URL that does not answer, or answers with an error status, is one
line (`DataError`).

`download_corpus(name)` fetches a named corpus (`CORPORA`) into `CACHE_DIR/<name>/`, where
the shipped configs look when `../shared/data` does not hold it (`local_or_downloaded`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from transformer.errors import DataError, UserError

URL_SCHEMES = ('https://', 'http://')

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


def cache_dir() -> pathlib.Path:
  from transformer import storage
  return storage.cache_root() / 'downloads'


def is_url(path) -> bool:
  return isinstance(path, str) and path.startswith(URL_SCHEMES)


def cached_download(url: str) -> pathlib.Path:
  """The local copy of `url`, downloaded on the first call (see the module docstring)."""
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme not in ('https', 'http') or not parsed.netloc:
    raise DataError(f'{url} is not a URL to download (https://HOST/PATH)')
  name = pathlib.PurePosixPath(parsed.path).name or 'download'
  folder = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]
  target = folder / name
  if target.is_file():
    return target
  folder.mkdir(parents=True, exist_ok=True)
  from tqdm.auto import tqdm
  try:
    response = urllib.request.urlopen(url, timeout=60)
  except urllib.error.HTTPError as error:
    raise DataError(f'cannot download {url}: HTTP {error.code} {error.reason}') from None
  except (urllib.error.URLError, OSError, ValueError) as error:
    reason = getattr(error, 'reason', error)
    raise DataError(f'cannot download {url}: {reason}') from None
  handle, scratch = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.part')
  try:
    with response, os.fdopen(handle, 'wb') as out:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=total, unit='B', unit_scale=True, desc=f'download {name}',
                mininterval=0.5) as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          bar.update(len(chunk))
      if total is not None and out.tell() != total:
        raise DataError(f'cannot download {url}: the connection closed after {out.tell()} '
                        f'of {total} bytes; run again')
    os.replace(scratch, target)
  except OSError as error:
    raise DataError(f'cannot download {url}: {error}') from None
  finally:
    if os.path.exists(scratch):
      os.unlink(scratch)
  return target


def corpus_folder(name: str) -> pathlib.Path:
  return cache_dir() / name


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
    fetched = cached_download(base + remote)
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
