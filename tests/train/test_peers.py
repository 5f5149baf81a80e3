"""peers.py: a process that dies is seen by the others at once (its connection closes),
process 0 tells the rest who it was, and an orderly end is no alarm. Process 0's watcher
runs here (its exit recorded instead of taken); the others are real processes."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import REPO, xla_env
from transformer import errors
from transformer.train import peers

# A process `me` of `count`, connected to process 0 on this machine; it prints `connected`,
# then ends as argv[4] says: `exit` (in order), `crash` (an uncaught exception), `mistake`
# (a user error), else it waits (to be killed, or told).
PEER = '''
import sys, time
from transformer.train import peers
me, count, port, end = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
class Client:   # the coordination service's store, as far as process 0's port goes
  def blocking_key_value_get(self, key, timeout_ms):
    return port
peers.watch(me, count, Client(), '127.0.0.1')
print('connected', flush=True)
if end == 'exit':
  sys.exit(0)
if end == 'crash':
  raise RuntimeError('a bug')
if end == 'mistake':
  from transformer import errors
  def fails():
    raise errors.ConfigError('data.vocab_size is too small: set data.vocab_size >= 325')
  sys.exit(errors.guarded(fails))
time.sleep(120)
'''


class Store:
  """The key-value store process 0 publishes its port in."""

  def __init__(self):
    self.values = {}

  def key_value_set(self, key, value):
    self.values[key] = value


@pytest.fixture
def coordinator(monkeypatch):
  """Process 0's watcher of `count` processes, and the lines it would have left with."""
  lost, seen = [], threading.Event()

  def record(error):
    lost.append(str(error))
    seen.set()
  monkeypatch.setattr(errors, 'exit_stopped', record)
  watchers = []

  def start(count):
    store = Store()
    watcher = peers.connect(0, count, store, '127.0.0.1')
    watchers.append(watcher)
    return watcher, store.values[peers._KEY]
  yield start, lost, seen
  for watcher in watchers:
    watcher.done()


def peer(me: int, count: int, port: str, end: str) -> subprocess.Popen:
  process = subprocess.Popen([sys.executable, '-c', PEER, str(me), str(count), port, end],
                             cwd=REPO, env=xla_env(None), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline() == 'connected\n', process.communicate()[1][-3000:]
  return process


def test_a_killed_process_is_named_at_once_by_every_survivor(coordinator):
  start, lost, seen = coordinator
  watcher, port = start(3)
  watcher.line = lambda process, reason: f'lost {process}: {reason}'
  told, killed = peer(1, 3, port, 'wait'), peer(2, 3, port, 'wait')
  deadline = time.time() + 10
  while sorted(p for p in watcher.peers.values() if p is not None) != [1, 2]:
    assert time.time() < deadline, watcher.peers   # both have said who they are
    time.sleep(0.01)
  killed.kill()
  began = time.time()
  assert seen.wait(10), 'process 0 never noticed'
  assert time.time() - began < 5
  assert lost == ['lost 2: its connection closed: killed or crashed']
  # Process 0 told process 1, which left with one line naming process 2, status 3.
  _, stderr = told.communicate(timeout=30)
  killed.wait()
  assert told.returncode == 3, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      'stopped: process 1 of 3 lost contact with process 2 (its connection to process 0 '
      'closed: killed or crashed)'), stderr[-3000:]
  assert 'Traceback' not in stderr


def test_an_orderly_end_or_a_stranger_is_no_alarm_and_a_crash_is(coordinator):
  start, lost, seen = coordinator
  watcher, port = start(2)
  watcher.line = lambda process, reason: f'lost {process}: {reason}'
  # Connections that are not the run's (no token, a wrong one) close unheeded.
  for greeting in (b'', b'hello 1 not-the-token\n', b'GET / HTTP/1.1\r\n\r\n'):
    with socket.create_connection(('127.0.0.1', int(port.split()[0]))) as stranger:
      stranger.sendall(greeting)
  finished = peer(1, 2, port, 'exit')
  assert finished.wait(30) == 0, finished.communicate()[1][-3000:]
  assert not seen.wait(1.0), lost
  watcher, port = start(2)
  watcher.line = lambda process, reason: f'lost {process}: {reason}'
  crashed = peer(1, 2, port, 'crash')
  _, stderr = crashed.communicate(timeout=30)
  assert crashed.returncode == 1 and 'RuntimeError: a bug' in stderr, stderr[-3000:]
  assert seen.wait(10), 'process 0 never noticed'
  assert lost == ['lost 1: it crashed: RuntimeError: a bug']   # named, and only once


def _three_with_process_2_waiting(coordinator):
  """Process 0's watcher of 3 processes, process 2 connected and waiting (to be told)."""
  start, lost, seen = coordinator
  watcher, port = start(3)
  waiting = peer(2, 3, port, 'wait')
  deadline = time.time() + 10
  while 2 not in watcher.peers.values():
    assert time.time() < deadline, watcher.peers
    time.sleep(0.01)
  return lost, seen, port, waiting


def test_a_crash_is_named_by_every_survivor(coordinator):
  lost, seen, port, waiting = _three_with_process_2_waiting(coordinator)
  crashed = peer(1, 3, port, 'crash')
  assert crashed.wait(30) == 1
  assert seen.wait(10), 'process 0 never noticed'
  assert lost == ['process 0 of 3 lost contact with process 1 (it crashed: RuntimeError: a bug)']
  # Relayed by process 0: process 2 leaves with status 3, naming process 1's error.
  _, stderr = waiting.communicate(timeout=30)
  assert waiting.returncode == 3, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      'stopped: process 2 of 3 lost contact with process 1 (it crashed: RuntimeError: a '
      'bug)'), stderr[-3000:]


def test_a_user_error_ends_every_process_with_its_line(coordinator):
  lost, seen, port, waiting = _three_with_process_2_waiting(coordinator)
  mistaken = peer(1, 3, port, 'mistake')
  _, stderr = mistaken.communicate(timeout=30)
  line = 'data.vocab_size is too small: set data.vocab_size >= 325'
  assert mistaken.returncode == 2 and stderr.strip().splitlines() == [f'error: {line}'], stderr
  assert seen.wait(10), 'process 0 never heard'
  assert lost == [f'process 1 stopped: {line}']
  # Relayed by process 0: process 2 leaves too, status 2, with process 1's line.
  _, stderr = waiting.communicate(timeout=30)
  assert waiting.returncode == 2, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == f'error: process 1 stopped: {line}', stderr
  assert 'Traceback' not in stderr


def test_without_a_connection_the_run_goes_on(caplog):
  class Unreachable:
    def blocking_key_value_get(self, key, timeout_ms):
      raise RuntimeError('DEADLINE_EXCEEDED: no such key')
  assert peers.connect(1, 2, Unreachable(), '127.0.0.1') is None
  assert "a lost process is found by JAX's heartbeat only" in caplog.text
