"""storage.fetch of web URLs (data.path as a URL, `python -m transformer download`), against
a loopback HTTP server."""

import gzip
import http.server
import threading

import pytest

from transformer import __main__ as cli_main
from transformer import storage
from transformer.data import download
from transformer.data.sources import TextFile
from transformer.errors import DataError, MissingFileError


@pytest.fixture
def server(tmp_path, monkeypatch):
  """(base URL, files served by path, requests seen): a server on 127.0.0.1 in a thread,
  stopped at the end; the download cache under tmp_path."""
  files: dict[str, bytes] = {}
  seen: list[str] = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      seen.append(self.path)
      if self.path == '/broken':
        self.send_error(500, 'Internal Server Error')
        return
      if self.path not in files:
        self.send_error(404, 'Not Found')
        return
      body = files[self.path]
      self.send_response(200)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv('TRANSFORMER_CACHE', str(tmp_path))
  try:
    yield f'http://127.0.0.1:{httpd.server_address[1]}', files, seen
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_url_is_downloaded_once_into_the_cache(server, tmp_path):
  base, files, seen = server
  files['/data/input.txt'] = b'First Citizen:\nBefore we proceed any further, hear me speak.\n'
  path = storage.fetch(base + '/data/input.txt')
  assert path.read_bytes() == files['/data/input.txt'] and path.name == 'input.txt'
  assert path.is_relative_to(tmp_path / 'files')
  assert [p.name for p in path.parent.iterdir()] == ['input.txt']   # no partial file left
  written = path.stat().st_mtime_ns
  assert storage.fetch(base + '/data/input.txt') == path and len(seen) == 2
  assert path.stat().st_mtime_ns == written   # its version asked, the copy kept
  # data.path takes the URL: the text source reads that copy.
  text = TextFile(base + '/data/input.txt', 0.1, whole_text=True)
  assert text.path == path and text.path.read_bytes() == files['/data/input.txt']
  # A new version (this server sends no ETag: a new size) is a new copy.
  files['/data/input.txt'] += b'Speak, speak.\n'
  assert storage.fetch(base + '/data/input.txt').read_bytes().endswith(b'Speak, speak.\n')


def test_bad_status_and_bad_url_are_one_line(server):
  base, _, _ = server
  with pytest.raises(MissingFileError, match=r'^Data file not found: .*/missing.txt \(HTTP 404\)$'):
    storage.fetch(base + '/missing.txt')
  with pytest.raises(DataError, match=r'^cannot download .*/broken: HTTP 500 Internal Server Error$'):
    storage.fetch(base + '/broken')
  with pytest.raises(DataError, match='is not a URL to download'):
    storage.fetch('https://')
  with pytest.raises(DataError, match='cannot download http://127.0.0.1:9/x.txt: '):
    storage.fetch('http://127.0.0.1:9/x.txt')     # nothing listens there
  assert not any(p.is_file() for p in storage.cache_root().rglob('*'))


def test_download_multi30k_into_the_folder_its_config_reads(server, monkeypatch, capsys,
                                                            tmp_path):
  base, files, _ = server
  _, names = download.CORPORA['multi30k']
  for local, remote in names.items():
    files[f'/raw/{remote}'] = gzip.compress(f'{local} line 1\n{local} line 2\n'.encode())
  monkeypatch.setitem(download.CORPORA, 'multi30k', (base + '/raw/', names))
  assert cli_main.main(['download', 'multi30k']) == 0
  folder = download.corpus_folder('multi30k')
  assert sorted(p.name for p in folder.iterdir()) == sorted(names)
  assert (folder / 'valid.de').read_text() == 'valid.de line 1\nvalid.de line 2\n'
  assert str(folder) in capsys.readouterr().out
  # The config reads the shared copy where there is one, else this folder.
  from transformer.train.defaults import config_from_file
  from tests.helpers import REPO
  monkeypatch.chdir(tmp_path)                       # no ../shared/data from here
  config = config_from_file(REPO / 'configs' / 'multi30k_ende.py')
  assert config.data.path == str(folder)
  assert cli_main.main(['download', 'nope']) == 2
  assert "no corpus 'nope' to download" in capsys.readouterr().err


def test_a_web_corpus_needs_no_cloud_extra(server, tmp_path):
  # Without gcsfs, s3fs or fsspec (a plain install), an https:// data.path still downloads.
  import subprocess
  import sys
  base, files, _ = server
  files['/input.txt'] = b'To be, or not to be\n'
  code = ('import sys; sys.modules.update(fsspec=None, gcsfs=None, s3fs=None)\n'
          'from transformer import storage\n'
          f'print(storage.fetch({base + "/input.txt"!r}).read_text(), end="")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=60, env={**__import__('os').environ,
                                        'TRANSFORMER_CACHE': str(tmp_path)})
  assert out.returncode == 0, out.stderr
  assert out.stdout == 'To be, or not to be\n'
