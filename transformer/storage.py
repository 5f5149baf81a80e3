"""Paths that may be URLs: a run's workdir and its corpora on an object store.

    workdir = storage.path('gs://bucket/run1')      # etils.epath.Path (gcsfs underneath)
    workdir = storage.path('runs/x')                # pathlib.Path, as before
    local = storage.local_dir(workdir)               # ~/.cache/transformer/... for this URL
    text = storage.fetch('gs://bucket/input.txt')    # a local copy, made once per version

Orbax writes checkpoints to the URL itself; everything else that must be a local file (the
memory-mapped token store, SentencePiece's training files, a corpus read by offsets) lives
in the local cache (`$TRANSFORMER_CACHE`, default `~/.cache/transformer`), keyed by the URL
and the content, safe to delete. Credentials and endpoints are the storage libraries' own
(`gcloud auth application-default login`, AWS's variables; `STORAGE_EMULATOR_HOST` for a
local GCS server). There is no storage client here: `etils.epath` over fsspec.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Union

from transformer.errors import DataError, MissingFileError, UserError

# The schemes a workdir or corpus may use, and the package (in the `cloud` extra) each needs.
_BACKENDS = {'gs': 'gcsfs', 's3': 's3fs'}

AnyPath = Union[pathlib.Path, 'epath.Path']  # noqa: F821


def is_url(p) -> bool:
  return '://' in str(p)


class _QuietBucketType:
  """Drops gcsfs's warning that it could not ask for a bucket's type (hierarchical
  namespace or not) and falls back to the plain API: printed at every start wherever the
  credentials do not allow that one call (a local server, a narrow service account), it
  changes nothing."""

  def filter(self, record) -> bool:
    return 'Could not determine bucket type' not in record.getMessage()


def _check_url(url: str) -> None:
  scheme = url.split('://', 1)[0]
  package = _BACKENDS.get(scheme)
  if package is None:
    raise UserError(f'{url}: unsupported URL scheme {scheme}:// (use a local path, gs:// or '
                    's3://; a corpus may also be https://)')
  try:
    __import__(package)
  except ImportError:
    raise UserError(f'{url}: {scheme}:// paths need {package}: pip install '
                    "'transformer[cloud]'") from None
  if scheme == 'gs':
    logger = logging.getLogger('gcsfs')
    if not any(isinstance(f, _QuietBucketType) for f in logger.filters):
      logger.addFilter(_QuietBucketType())


def path(p) -> AnyPath:
  """`p` as a path object: `etils.epath.Path` for a URL (after checking that its storage
  library is installed), else `pathlib.Path`. An epath is returned as it is."""
  if not is_url(p):
    return pathlib.Path(p)
  url = os.fspath(p) if not isinstance(p, str) else p
  _check_url(url)
  from etils import epath
  return epath.Path(url)


def check_bucket(p) -> None:
  """One line when workdir `p` cannot hold a run: its bucket does not exist or cannot be
  reached, or it is on S3 (below); a local path passes."""
  if not is_url(p):
    return
  url = os.fspath(p)
  _check_url(url)
  if url.startswith('s3://'):
    # Orbax (checked with orbax-checkpoint 0.12.8) cannot write a checkpoint to S3: its
    # TensorStore specs normalise paths with os.path.normpath, which folds s3:// to s3:/,
    # and only gs:// is sent to a cloud driver, so the first save raises "Checkpoint path
    # should be absolute" after the run has trained and written its metrics. (And its
    # TensorStore s3 driver reads no AWS_ENDPOINT_URL, so no S3-compatible store either.)
    raise UserError(f'{url}: a workdir cannot be on s3:// yet: Orbax cannot write '
                    'checkpoints to S3 (it folds s3:// to s3:/); train into a gs:// or local '
                    'workdir (data.path may stay on s3://)')
  _check_bucket_exists(url)


def _check_bucket_exists(url: str) -> None:
  import fsspec
  fs, _ = fsspec.core.url_to_fs(url)
  bucket = url.split('://', 1)[1].split('/', 1)[0]
  try:
    found = fs.exists(bucket)
  except Exception as e:  # credentials, network: the library's own words, on one line
    raise UserError(f'{url}: cannot reach bucket {bucket}: '
                    f'{" ".join(str(e).split())[:300]}') from None
  if not found:
    raise UserError(f'{url}: bucket {bucket} does not exist (create it, or check the name '
                    'and the credentials)')


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get('TRANSFORMER_CACHE') or
                      pathlib.Path('~/.cache/transformer').expanduser())


def cache_dir(kind: str, key) -> pathlib.Path:
  """A local folder for `key` (a URL, say): `cache_root()/kind/<hash>`."""
  digest = hashlib.sha256(str(key).encode()).hexdigest()[:16]
  return cache_root() / kind / digest


def local_dir(p) -> pathlib.Path | None:
  """This host's folder for its own copies of URL folder `p`'s files (a run's tokenizer,
  token store and TensorBoard files), or None when `p` is local (its files are its own).
  No host reads another's disk, and SentencePiece, the token store's memory maps and
  TensorBoard's writer want local files."""
  return cache_dir('workdirs', p) if is_url(p) else None


def fetch(url) -> pathlib.Path:
  """A local copy of the file at `url` (gs://, s3://, https://), downloaded once per version
  of it: keyed by the URL, its size and its ETag, generation or modification time. A web
  URL needs no extra (urllib reads it); a bucket's needs the `cloud` extra."""
  url = os.fspath(url)
  if url.split('://', 1)[0] in ('http', 'https'):
    return _fetch_web(url)
  _check_url(url)
  import fsspec
  fs, remote = fsspec.core.url_to_fs(url)
  try:
    info = fs.info(remote)
  except FileNotFoundError:
    _check_bucket_exists(url)    # a missing bucket says so, not "file not found"
    raise MissingFileError(f'Data file not found: {url}') from None
  version = (url, info.get('size'), info.get('generation') or info.get('ETag')
             or info.get('updated') or info.get('LastModified'))
  return _cached_copy(url, version, info.get('size'), lambda: fs.open(remote, 'rb'))


def _fetch_web(url: str) -> pathlib.Path:
  """One GET: its headers name the version; the body is read only when that version is
  not in the cache yet."""
  parsed = urllib.parse.urlparse(url)
  if not parsed.netloc:
    raise DataError(f'{url} is not a URL to download (https://HOST/PATH)')
  try:
    response = urllib.request.urlopen(url, timeout=60)
  except urllib.error.HTTPError as error:
    if error.code == 404:
      raise MissingFileError(f'Data file not found: {url} (HTTP 404)') from None
    raise DataError(f'cannot download {url}: HTTP {error.code} {error.reason}') from None
  except (urllib.error.URLError, OSError, ValueError) as error:
    raise DataError(f'cannot download {url}: {getattr(error, "reason", error)}') from None
  with response:
    size = int(response.headers.get('Content-Length') or 0) or None
    version = (url, size, response.headers.get('ETag') or response.headers.get('Last-Modified'))
    return _cached_copy(url, version, size, lambda: contextlib.nullcontext(response))


def _cached_copy(url: str, version, size: int | None, open_source) -> pathlib.Path:
  """`cache_dir('files', version)/<the URL's file name>`, written through a partial file
  renamed at the end (an interrupted download leaves nothing a later run would take for
  the file), with a progress bar past 16 MB."""
  name = urllib.parse.urlparse(url).path.rstrip('/').rsplit('/', 1)[-1] or 'download'
  target = cache_dir('files', repr(version)) / name
  if target.is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f'.{name}.{os.getpid()}.partial')
  from tqdm.auto import tqdm
  try:
    with open_source() as source, open(partial, 'wb') as out, tqdm(
        total=size, unit='B', unit_scale=True, desc=f'fetching {name}',
        disable=(size or 0) < (1 << 24), mininterval=1.0) as bar:
      while block := source.read(1 << 22):
        out.write(block)
        bar.update(len(block))
      if size is not None and out.tell() != size:
        raise DataError(f'cannot download {url}: the connection closed after {out.tell()} '
                        f'of {size} bytes; run again')
    partial.replace(target)
  except OSError as error:
    raise DataError(f'cannot download {url}: {error}') from None
  finally:
    partial.unlink(missing_ok=True)
  return target


def files(folder: AnyPath) -> list[str]:
  """The paths of the files under `folder`, relative to it, sorted ([] if it is absent).
  (epath has no recursive glob on a bucket: fsspec's `find` lists a prefix in one go.)"""
  if not is_url(folder):
    folder = pathlib.Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())
  import fsspec
  fs, root = fsspec.core.url_to_fs(os.fspath(folder))
  root = root.rstrip('/')
  return sorted(f[len(root):].lstrip('/') for f in fs.find(root) if f.startswith(root + '/'))


def download_tree(source: AnyPath, target: pathlib.Path) -> bool:
  """Copies the files under `source` (a URL folder) into `target`, replacing it; False
  when `source` holds nothing."""
  names = files(source)
  if not names:
    return False
  if target.exists():
    shutil.rmtree(target)
  for name in names:
    local = target / name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes((source / name).read_bytes())
  return True


def upload_tree(source: pathlib.Path, target: AnyPath) -> None:
  """Copies the files under local `source` to `target` (a URL folder)."""
  for f in sorted(p for p in source.rglob('*') if p.is_file()):
    (target / str(f.relative_to(source))).write_bytes(f.read_bytes())


def move_tree(source: AnyPath, target: AnyPath) -> None:
  """Moves folder `source` to `target` (a new folder on the same store). An object store
  has no rename: its objects are copied by the store itself (GCS's rewrite, S3's copy; no
  byte passes through this host), then the source's deleted."""
  if not is_url(source):
    pathlib.Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
    return
  import fsspec
  fs, remote = fsspec.core.url_to_fs(os.fspath(source))
  # Not fs.mv: gcsfs tries GCS's object move first, and where a bucket lacks it, logs each
  # object's refusal with a traceback before it falls back to this copy.
  fs.copy(remote.rstrip('/'), fsspec.core.url_to_fs(os.fspath(target))[1], recursive=True)
  # Deleted through epath's own filesystem object (not `fs`, another instance), whose
  # cached listing of the parent would otherwise still show `source` to Orbax.
  source.rmtree()


def rmtree(p: AnyPath) -> None:
  """Deletes folder `p` and what it holds, if it exists (errors ignored)."""
  if not is_url(p):
    shutil.rmtree(p, ignore_errors=True)
    return
  try:
    if p.exists():
      p.rmtree()
  except OSError:
    pass
