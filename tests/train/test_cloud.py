"""Workdirs and corpora in a bucket: train.py, resume, the damaged-checkpoint fallback and
translate against a real GCS server (fake-gcs-server, `tests/cloud.py`); the lease that
locks a workdir URL; one line for a missing bucket or a missing cloud extra."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, tiny_overrides, train_py
from transformer import storage
from transformer.errors import UserError


def _losses(records):
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def _env(home):
  """A process with its own HOME (so its cache is `home/.cache/transformer`)."""
  env = dict(os.environ, HOME=str(home))
  env.pop('TRANSFORMER_CACHE', None)
  return env


def _files(folder):
  return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())


@pytest.mark.slow
def test_a_run_into_a_bucket_resumes_falls_back_and_translates(gcs_bucket, tmp_path):
  from etils import epath

  from transformer.train.metrics import read_metrics
  overrides = {**tiny_overrides(), 'train.checkpoint_every': 3, 'train.max_to_keep': 5}
  local = tmp_path / 'local'
  done = train_py(local, {**overrides, 'train.num_steps': 12})
  assert done.returncode == 0, done.stderr[-3000:]
  expected = _losses(read_metrics(local))
  assert sorted(expected) == list(range(1, 13))

  url, home = f'{gcs_bucket}/run', tmp_path / 'home'
  home.mkdir()
  first = train_py(url, {**overrides, 'train.num_steps': 9}, env=_env(home))
  assert first.returncode == 0, first.stderr[-3000:]
  run = epath.Path(url)
  assert _losses(read_metrics(url)) == {s: expected[s] for s in range(1, 10)}
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['3', '6', '9']
  assert json.loads((run / 'config.json').read_text())['train']['num_steps'] == 9
  assert any((run / 'tensorboard').iterdir())
  assert not (run / '.lock').exists()                     # the lease is given back
  # Nothing of the run outside the bucket but the cache (no `gs:` folder either).
  assert not (REPO / 'gs:').exists()
  assert all(f.startswith('.cache/transformer/') for f in _files(home)), _files(home)

  translated = subprocess.run(
      [sys.executable, '-m', 'transformer', 'translate', '--workdir', url], cwd=REPO,
      env=_env(home), input='1 2 3\n4 5\n', capture_output=True, text=True, timeout=300)
  assert translated.returncode == 0, translated.stderr[-3000:]
  assert len(translated.stdout.splitlines()) == 2

  # A truncated newest checkpoint in the bucket: moved aside, the run resumes from step 6
  # (its config, data position and state from the bucket) and matches the local run.
  newest = max((run / 'checkpoints' / '9' / name
                for name in storage.files(run / 'checkpoints' / '9')),
               key=lambda p: p.stat().length)
  newest.write_bytes(newest.read_bytes()[:newest.stat().length // 2])
  again = train_py(url, {**overrides, 'train.num_steps': 12}, env=_env(home))
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'checkpoint 9' in again.stderr or 'checkpoint 9' in again.stdout, again.stderr[-3000:]
  assert [p.name.split('-')[0] for p in (run / 'checkpoints_damaged').iterdir()] == ['9']
  assert _losses(read_metrics(url)) == expected          # bitwise, steps 7-9 retrained
  assert json.loads((run / 'config.json').read_text())['train']['num_steps'] == 12


def test_a_missing_bucket_is_one_line(gcs_bucket, tmp_path):
  result = train_py('gs://no-such-bucket-here/run', tiny_overrides(), env=_env(tmp_path))
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "bucket no-such-bucket-here does not exist" in lines[0], result.stderr


def test_a_corpus_in_a_missing_bucket_names_the_bucket(gcs_bucket, tmp_path, monkeypatch):
  from transformer.errors import MissingFileError, UserError
  monkeypatch.setenv('TRANSFORMER_CACHE', str(tmp_path / 'cache'))
  with pytest.raises(UserError, match='bucket no-such-bucket-here does not exist'):
    storage.fetch('gs://no-such-bucket-here/data/input.txt')
  with pytest.raises(MissingFileError, match='Data file not found: gs://'):
    storage.fetch(f'{gcs_bucket}/data/nope.txt')     # the bucket is there, the file is not


def test_without_the_cloud_extra_a_url_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, 'gcsfs', None)     # import gcsfs fails
  with pytest.raises(UserError, match=r"gs:// paths need gcsfs: pip install "
                                      r"'transformer\[cloud\]'"):
    storage.path('gs://bucket/run')


@pytest.mark.parametrize('where', ['bucket', 'local'])
def test_move_tree_moves_every_file_of_a_folder(where, gcs_bucket, tmp_path):
  root = storage.path(gcs_bucket if where == 'bucket' else tmp_path)
  source = root / 'checkpoints' / '12'
  contents = {'_CHECKPOINT_METADATA': b'{}', 'state/d/0.0': os.urandom(3000),
              'state/manifest.ocdbt': b'm', 'data/data.json': b'[1]'}
  for name, data in contents.items():
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    (source / name).write_bytes(data)
  (root / 'checkpoints' / '6').mkdir(parents=True, exist_ok=True)
  ((root / 'checkpoints' / '6') / 'kept').write_bytes(b'k')   # a neighbour stays put
  target = root / 'checkpoints_damaged' / '12-1'
  assert sorted(p.name for p in (root / 'checkpoints').iterdir()) == ['12', '6']
  storage.move_tree(source, target)
  # The folder's listing as epath (and so Orbax) sees it after the move, not a cached one.
  assert sorted(p.name for p in (root / 'checkpoints').iterdir()) == ['6']
  assert {n: (target / n).read_bytes() for n in storage.files(target)} == contents
  assert storage.files(source) == [] and not source.exists()
  assert storage.files(root / 'checkpoints') == ['6/kept']


def test_a_workdir_url_is_locked_by_a_lease(gcs_bucket):
  from etils import epath

  from transformer.train.workdir import WorkdirLock
  url = f'{gcs_bucket}/locked'
  with WorkdirLock(url, lease_seconds=30):
    holder = json.loads((epath.Path(url) / '.lock').read_text())
    assert str(os.getpid()) in holder['holder']
    with pytest.raises(UserError, match='is in use by PID'):
      WorkdirLock(url).__enter__()
  assert not (epath.Path(url) / '.lock').exists()
  # A dead trainer's lease (no longer renewed) is taken over once it has expired.
  (epath.Path(url) / '.lock').write_text(json.dumps(
      {'holder': 'PID 1 on host gone', 'token': 'x', 'expires': time.time() - 1}))
  with WorkdirLock(url):
    assert json.loads((epath.Path(url) / '.lock').read_text())['token'] != 'x'


def test_a_lost_host_exit_waits_for_a_lease_release_under_way(gcs_bucket):
  """A survivor's exit (peers.py's thread, `errors.exit_stopped`) may come while the main
  thread is leaving the lock's `with` block: it must wait for that release, not skip it
  (the restarted run would wait out the lease)."""
  import threading

  from etils import epath

  from transformer import errors
  from transformer.train.workdir import WorkdirLock
  url = f'{gcs_bucket}/leaving'
  lock = WorkdirLock(url, lease_seconds=30)
  lock.__enter__()
  lease = lock._lease
  reading, go_on = threading.Event(), threading.Event()
  read = lease._read

  def slow_read():   # the release's read of the lease, held until the exit is under way
    reading.set()
    assert go_on.wait(30)
    return read()
  lease._read = slow_read
  leaving = threading.Thread(target=lock.__exit__, args=(None, None, None))
  leaving.start()
  assert reading.wait(30)
  lease._read = read
  # What exit_stopped runs before os._exit.
  exiting = threading.Thread(target=lambda: [fn() for fn in list(errors._stopped_exit)])
  exiting.start()
  exiting.join(0.5)
  assert exiting.is_alive()   # waiting for the release under way
  go_on.set()
  leaving.join(30)
  exiting.join(30)
  assert not leaving.is_alive() and not exiting.is_alive()
  assert not (epath.Path(url) / '.lock').exists()
  assert lease not in [getattr(fn, '__self__', None) for fn in errors._stopped_exit]


@pytest.mark.slow
def test_a_corpus_in_a_bucket_and_a_published_tokenizer(gcs_bucket, tmp_path):
  from etils import epath
  corpus = epath.Path(gcs_bucket) / 'data' / 'text.txt'
  corpus.write_text('abcabcabd\n' * 400)
  url, home = f'{gcs_bucket}/charlm', tmp_path / 'host0'
  home.mkdir()
  overrides = {
      'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64, 'model.num_layers': 1,
      'model.max_len': 16, 'data.path': str(corpus), 'data.max_len': 16,
      'train.num_steps': 4, 'train.batch_size': 8, 'train.eval_every': 4,
      'train.checkpoint_every': 4, 'train.num_examples_to_show': 0, 'train.eval_batches': 1,
      'train.steps_per_call': 1,
  }
  result = train_py(url, overrides, config='configs/shakespeare_char.py', env=_env(home))
  assert result.returncode == 0, result.stderr[-3000:]
  published = json.loads((epath.Path(url) / 'tokenizer' / 'tokenizer.json').read_text())
  assert published['type'] == 'char' and set(published['chars']) == set('abcd\n')
  assert all(f.startswith('.cache/transformer/') for f in _files(home)), _files(home)
  # Another host (its own HOME, an empty cache) reads the run from the bucket alone.
  other = tmp_path / 'host1'
  other.mkdir()
  generated = subprocess.run(
      [sys.executable, '-m', 'transformer', 'generate', '--workdir', url, '--prompt', 'abc',
       '--max_new_tokens', '5', '--temperature', '0'], cwd=REPO, env=_env(other),
      capture_output=True, text=True, timeout=300)
  assert generated.returncode == 0, generated.stderr[-3000:]
  assert generated.stdout.startswith('abc') and len(generated.stdout.rstrip('\n')) == 8
  # evaluate builds that host's own token store from the corpus URL, in its own cache.
  evaluated = subprocess.run(
      [sys.executable, '-m', 'transformer', 'evaluate', '--workdir', url], cwd=REPO,
      env=_env(other), capture_output=True, text=True, timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'loss' in evaluated.stdout, evaluated.stdout
  assert any('/data/store/' in f for f in _files(other)), _files(other)
  assert all(f.startswith('.cache/transformer/') for f in _files(other)), _files(other)


def test_a_web_corpus_is_downloaded_once_into_the_cache(tmp_path, monkeypatch):
  import functools
  import http.server
  import threading

  from transformer.data.sources import TextFile
  from transformer.errors import MissingFileError
  served = tmp_path / 'www'
  served.mkdir()
  (served / 'text.txt').write_text('hello world\n' * 50)
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      requests.append(self.path)
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Handler, directory=str(served)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    monkeypatch.setenv('TRANSFORMER_CACHE', str(tmp_path / 'cache'))
    url = f'http://127.0.0.1:{server.server_address[1]}/text.txt'
    source = TextFile(url, 0.1, whole_text=True)
    assert str(source.path).startswith(str(tmp_path / 'cache'))
    assert source.path.read_text() == 'hello world\n' * 50
    assert '/text.txt' in requests
    written = source.path.stat().st_mtime_ns
    # The second open asks for the object's size and version only (no new download).
    assert TextFile(url, 0.1, whole_text=True).path == source.path
    assert source.path.stat().st_mtime_ns == written
    # A new version of the object is a new copy (this server sends no ETag: a new size).
    (served / 'text.txt').write_text('hello again!\n' * 50)
    assert TextFile(url, 0.1, whole_text=True).path.read_text() == 'hello again!\n' * 50
    with pytest.raises(MissingFileError, match='Data file not found: http'):
      TextFile(url.replace('text.txt', 'nope.txt'), 0.1, whole_text=True)
  finally:
    server.shutdown()
    server.server_close()


def test_an_s3_corpus_is_fetched_once_per_version_into_the_cache(s3_bucket, tmp_path,
                                                                 monkeypatch):
  """s3:// corpora through the same layer as gs:// (s3fs, reaching moto's server through
  AWS_ENDPOINT_URL and AWS's credentials): copied into the local cache once per version."""
  from etils import epath

  from transformer.errors import MissingFileError
  monkeypatch.setenv('TRANSFORMER_CACHE', str(tmp_path / 'cache'))
  corpus = epath.Path(s3_bucket) / 'data' / 'text.txt'
  corpus.write_text('hello world\n' * 50)
  local = storage.fetch(str(corpus))
  assert str(local).startswith(str(tmp_path / 'cache'))
  assert local.read_text() == 'hello world\n' * 50
  written = local.stat().st_mtime_ns
  assert storage.fetch(str(corpus)) == local and local.stat().st_mtime_ns == written
  corpus.write_text('hello again!\n' * 50)   # a new version: a new ETag, a new copy
  assert storage.fetch(str(corpus)).read_text() == 'hello again!\n' * 50
  with pytest.raises(MissingFileError, match='Data file not found: s3://'):
    storage.fetch(f'{s3_bucket}/data/nope.txt')


def test_an_s3_workdir_is_one_line_before_anything_is_written(s3_bucket, tmp_path):
  """Orbax cannot write checkpoints to s3:// (it folds the URL to s3:/): a run would train,
  write config.json and metrics.jsonl there, then fail at its first save with a traceback.
  train.py refuses it at once instead, and writes nothing."""
  result = train_py(f'{s3_bucket}/run', tiny_overrides(), env=_env(tmp_path), timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines == [f'error: {s3_bucket}/run: a workdir cannot be on s3:// yet: Orbax cannot '
                   'write checkpoints to S3 (it folds s3:// to s3:/); train into a gs:// or '
                   'local workdir (data.path may stay on s3://)'], lines
  assert storage.files(s3_bucket) == []
