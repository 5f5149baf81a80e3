"""A process of a multi-host run that dies is seen by the others at once, not after JAX's
heartbeat timeout: every process keeps one TCP connection to process 0, watched by a
daemon thread.

JAX's coordination service finds a dead process only by its missed heartbeats
(`distributed.heartbeat_timeout_seconds`), and then ends every survivor natively
(`Terminating process because the JAX distributed service detected fatal errors`, SIGABRT,
Python's thread dump). A survivor waits for that wherever nothing fails at once: in an
Orbax barrier (an asynchronous save's finalisation waits there for every process), in an
NCCL or TPU collective. But a process that is killed or crashes has its sockets closed by
the kernel at once, so the other end of its connection reads end-of-file, and the
survivor leaves with one line and status 3 (`errors.exit_stopped`), from this thread,
whatever its main thread is blocked in.

    peers.watch(process_index, process_count, client, coordinator_host)   # process.py
    peers.describe(lambda lost, reason: 'the line')   # the trainer: names the checkpoint

A process that exits in order says `done` first (atexit), so its closing is no alarm; one
that dies of an uncaught exception closes its connection right after its traceback, so
the others stop at once instead of waiting in the next collective; it says `crashed K
<the exception's line>` first, so their line names the error. Process 0 relays: when it
loses process k it tells the others (`lost k`, `crashed k ...`) before leaving, so each
of them names the process that died, not process 0. A process that stops on a user error
(one line, status 2) says `stopped K <line>` before it leaves, and the others leave with
that line and status 2, instead of waiting for it in their next collective. A host that vanishes
without closing its connections (power cut, network partition) is found by the heartbeat
alone. Where the connection cannot be made (a firewall between hosts), the run goes on
without it, with a warning.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import selectors
import socket
import sys
import threading
from typing import Callable

from transformer import errors

# Process 0's port and a token, in the coordination service's key-value store.
_KEY = 'transformer/peers/port'
_CONNECT_SECONDS = 60

_watcher: '_Watcher | None' = None


def _default_line(me: int, count: int, lost: int, reason: str) -> str:
  return f'process {me} of {count} lost contact with process {lost} ({reason})'


class _Watcher(threading.Thread):

  def __init__(self, me: int, count: int, token: str, listener: socket.socket | None,
               coordinator: socket.socket | None):
    super().__init__(name='transformer-peers', daemon=True)
    self.me, self.count, self.token = me, count, token
    self.listener, self.coordinator = listener, coordinator
    self.selector = selectors.DefaultSelector()
    self.peers: dict[socket.socket, int | None] = {}   # process 0: connection -> process
    self.buffers: dict[socket.socket, bytes] = {}
    self.finished: set[int] = set()   # processes that said `done`
    self.line = lambda lost, reason: _default_line(me, count, lost, reason)
    self.lock = threading.Lock()
    self.stopped = False
    if listener is not None:
      listener.setblocking(False)
      self.selector.register(listener, selectors.EVENT_READ)
    if coordinator is not None:
      self.peers[coordinator] = 0
      self.selector.register(coordinator, selectors.EVENT_READ)

  def run(self) -> None:
    while not self.stopped:
      try:
        events = self.selector.select(timeout=1.0)
      except (OSError, ValueError):   # abandoned: its sockets were closed under it
        return
      for key, _ in events:
        if self.stopped:
          return
        if key.fileobj is self.listener:
          connection, _ = self.listener.accept()
          connection.setblocking(True)
          self.peers[connection] = None   # named by its `hello`
          self.selector.register(connection, selectors.EVENT_READ)
          continue
        self._read(key.fileobj)

  def _read(self, connection: socket.socket) -> None:
    try:
      data = connection.recv(4096)
    except OSError:
      data = b''
    if not data:
      self._closed(connection)
      return
    self.buffers[connection] = self.buffers.get(connection, b'') + data
    *lines, self.buffers[connection] = self.buffers[connection].split(b'\n')
    for line in lines:
      words = line.decode(errors='replace').split()
      if words[:1] == ['hello'] and len(words) == 3 and words[2] == self.token \
          and words[1].isdigit():
        self.peers[connection] = int(words[1])
      elif self.peers.get(connection) is None:
        # Not one of the run's processes (a port scan, a stray client): only the run's
        # processes, who read the token from the coordination service, may raise an alarm.
        self.selector.unregister(connection)
        self.peers.pop(connection, None)
        connection.close()
        return
      elif words == ['done']:
        self.finished.add(self.peers[connection])
      elif words[:1] == ['lost'] and len(words) == 2 and words[1].isdigit():
        # From process 0: process `words[1]` is gone.
        self._lost(int(words[1]), 'its connection to process 0 closed: killed or crashed')
      elif words[:1] == ['crashed'] and len(words) > 2 and words[1].isdigit():
        # Process `words[1]` is dying of an uncaught exception, named (process 0 relays).
        if self.me == 0:
          self._send_all(line.decode(errors='replace') + '\n', but=connection)
        self._lost(int(words[1]), 'it crashed: ' + ' '.join(words[2:]))
      elif words[:1] == ['stopped'] and len(words) > 2 and words[1].isdigit():
        # Process `words[1]` stopped on a user error (process 0 relays it to the others).
        if self.me == 0:
          self._send_all(line.decode(errors='replace') + '\n', but=connection)
        self._stopped(int(words[1]), ' '.join(words[2:]))

  def _closed(self, connection: socket.socket) -> None:
    self.selector.unregister(connection)
    connection.close()
    process = self.peers.pop(connection, None)
    if process is None or process in self.finished:
      return   # an orderly end (or a connection that never said who it was)
    if self.me == 0:
      self._send_all(f'lost {process}\n')
    self._lost(process, 'its connection closed: killed or crashed')

  def _lost(self, process: int, reason: str) -> None:
    with self.lock:
      if self.stopped:
        return
      self.stopped = True   # one line: a crash's news comes before its connection closes
      line = self.line(process, reason)
    logging.warning('peers: %s', line)
    errors.exit_stopped(errors.HostLost(line))

  def _stopped(self, process: int, message: str) -> None:
    with self.lock:
      if self.stopped:
        return
      self.stopped = True
    errors.exit_stopped(errors.UserError(f'process {process} stopped: {message}'))

  def tell_stopped(self, message: str) -> None:
    """This process stops on a user error: the others stop too, with its line."""
    with self.lock:
      if self.stopped:
        return
      self.stopped = True
    self._send_all(f'stopped {self.me} {message}\n')

  def _send_all(self, message: str, but: socket.socket | None = None) -> None:
    for connection in list(self.peers):
      if connection is but:
        continue
      try:
        connection.sendall(message.encode())
      except OSError:
        pass

  def done(self) -> None:
    """An orderly end: the others stop treating this process's closing as a loss."""
    with self.lock:
      if self.stopped:
        return
      self.stopped = True
    self._send_all('done\n')

  def tell_crashed(self, message: str) -> None:
    """This process dies of an uncaught exception (its traceback is out): the others
    leave at once, naming it and `message`, rather than only 'killed or crashed'."""
    with self.lock:
      tell, self.stopped = not self.stopped, True
    if tell:
      self._send_all(f'crashed {self.me} {message}\n')
    # Closed now, not at exit: the others' line must not wait for JAX's shutdown.
    for connection in [*self.peers, self.listener]:
      if connection is not None:
        try:
          connection.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass
        connection.close()


def connect(me: int, count: int, client, coordinator_host: str) -> '_Watcher | None':
  """Process `me`'s connections (process 0 listens, the others connect to it) and their
  running watcher; None where they cannot be made (then a warning says so).

  `client`: JAX's distributed runtime client, whose key-value store carries process 0's
  port and a token the others greet it with; `coordinator_host`: the address every process
  reached the coordination service at.
  """
  listener = coordinator = None
  try:
    if me == 0:
      token = secrets.token_hex(16)
      listener = (socket.create_server(('', 0), family=socket.AF_INET6, dualstack_ipv6=True)
                  if socket.has_dualstack_ipv6() else socket.create_server(('', 0)))
      listener.listen(count)
      client.key_value_set(_KEY, f'{listener.getsockname()[1]} {token}')
    else:
      port, token = client.blocking_key_value_get(_KEY, _CONNECT_SECONDS * 1000).split()
      coordinator = socket.create_connection((coordinator_host.strip('[]'), int(port)),
                                             timeout=_CONNECT_SECONDS)
      coordinator.settimeout(None)
      coordinator.sendall(f'hello {me} {token}\n'.encode())
  except Exception as error:   # noqa: BLE001 - the run works without it, only slower to stop
    logging.warning('peers: no connection to process 0 (%s); a lost process is found by '
                    "JAX's heartbeat only", error)
    for s in (listener, coordinator):
      if s is not None:
        s.close()
    return None
  watcher = _Watcher(me, count, token, listener, coordinator)
  watcher.start()
  return watcher


def watch(me: int, count: int, client, coordinator_host: str) -> None:
  """Starts this process's watcher (once, after `jax.distributed.initialize`)."""
  global _watcher
  if count < 2 or _watcher is not None:
    return
  _watcher = connect(me, count, client, coordinator_host)
  if _watcher is None:
    return
  # atexit runs last-registered first: `done` goes out before jax.distributed.shutdown
  # (registered when jax was imported) waits for the others.
  atexit.register(_watcher.done)
  errors.at_user_stop(_watcher.tell_stopped)
  previous = sys.excepthook

  def crashed(*exc_info):
    previous(*exc_info)   # the traceback first, then the others are told
    _watcher.tell_crashed(errors.typed_line(exc_info[1]))
  sys.excepthook = crashed


def describe(line: Callable[[int, str], str]) -> None:
  """`line(lost process, reason)` makes the line printed when a process is lost."""
  if _watcher is not None:
    with _watcher.lock:
      _watcher.line = line
