"""The run folder's guards: one trainer at a time, and resuming only a compatible run.

    with WorkdirLock(workdir):                     # a second trainer gets a clear refusal
      check_resume(config, workdir)                # a different model: one clear line
      ...
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import socket
import threading
import time
import uuid
from typing import Any

import ml_collections

from transformer import errors, storage
from transformer.config import ModelConfig
from transformer.errors import CheckpointError, UserError

# Model fields a resumed run may change: how it computes, not what it stores.
RUNTIME_MODEL_FIELDS = ('dtype', 'attention_impl', 'scan_layers', 'remat_policy', 'cpu_matmul',
                        'dropout_rate', 'attention_dropout_rate')


class WorkdirLock:
  """An exclusive lock on `workdir/.lock` (flock), holding the holder's host and PID.

  The operating system drops the lock when its process dies, however it dies, so a lock
  left by a killed trainer is simply taken over; the file's text only names the holder.
  Only process 0 of a multi-process run takes it (the others run under the same lock).
  A workdir on an object store (a URL) has no flock: its lock is a lease (`_Lease`).
  """

  def __init__(self, workdir, enabled: bool = True, lease_seconds: float = 60.0):
    self.enabled = enabled
    self._file = None
    self._lease = None
    self._forget = lambda: None
    if storage.is_url(workdir):
      self._lease = _Lease(storage.path(workdir) / '.lock', lease_seconds)
      self.path = self._lease.path
    else:
      self.path = pathlib.Path(workdir) / '.lock'

  def __enter__(self):
    if not self.enabled:
      return self
    if self._lease is not None:
      self._lease.acquire()
      # A survivor of a lost host leaves with os._exit, past this block's __exit__: without
      # this the restarted run would wait out the lease (its renewal stopped with it).
      self._forget = errors.at_stopped_exit(self._lease.release)
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or 'another process'
      self._file.close()
      self._file = None
      raise UserError(f'{self.path.parent} is in use by {holder}: wait for it to finish, '
                      'stop it, or train into another --workdir') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(_holder())
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._lease is not None and self.enabled:
      # Released before it is unregistered: a lost host's exit (another thread, at any
      # moment) then either finds this release done or waits for it to finish.
      self._lease.release()
      self._forget()
    if self._file is not None:
      self.path.unlink(missing_ok=True)
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _holder() -> str:
  return (f'PID {os.getpid()} on host {socket.gethostname()} '
          f'(since {time.strftime("%Y-%m-%d %H:%M:%S")})')


class _Lease:
  """A lock object on an object store: `{"holder", "token", "expires"}`, renewed by its
  holder every third of `seconds`. A trainer that dies stops renewing it; the next one
  takes it over once it has expired (so a killed run's workdir is free `seconds` later).

  Taking it: refuse a lease that is someone else's and unexpired; else write ours, wait
  a moment and read it back. Object stores give read-after-write consistency, so of two
  trainers that both wrote, only the later sees its own token and goes on.
  """

  def __init__(self, path, seconds: float, settle: float = 1.0):
    self.path, self.seconds, self.settle = path, seconds, settle
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None
    self._releasing = threading.Lock()
    self._released = False

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _write(self) -> None:
    self.path.write_text(json.dumps({'holder': _holder(), 'token': self.token,
                                     'expires': time.time() + self.seconds}))

  def _refuse(self, lease: dict):
    left = max(0, int(lease['expires'] - time.time()))
    raise UserError(f'{self.path.parent} is in use by {lease["holder"]} (its lease runs '
                    f'{left} s more unless renewed): wait for it to finish, stop it, or '
                    'train into another --workdir')

  def acquire(self) -> None:
    lease = self._read()
    if lease and lease.get('token') != self.token and lease.get('expires', 0) > time.time():
      self._refuse(lease)
    self._write()
    time.sleep(self.settle)
    lease = self._read()
    if not lease or lease.get('token') != self.token:
      self._refuse(lease or {'holder': 'another trainer', 'expires': time.time()})
    self._thread = threading.Thread(target=self._renew, daemon=True)
    self._thread.start()

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 3):
      lease = self._read()
      if lease and lease.get('token') != self.token:
        return   # taken over (we were presumed dead): the checkpoints' own atomicity holds
      self._write()

  def release(self) -> None:
    """Stops the renewal and deletes the lease if it is still ours. Once only: a second
    caller (the main thread leaving its `with` block while a lost host's exit releases it
    from another) waits until the first has finished."""
    with self._releasing:
      if self._released:
        return
      self._stop.set()
      if self._thread is not None:
        self._thread.join()
        self._thread = None
      lease = self._read()
      if lease and lease.get('token') == self.token:
        self.path.unlink(missing_ok=True)
      self._released = True


def stored_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for each setting that the checkpoint's arrays depend on (the
  task, the model's architecture, the optimizer state's structure) and that differs."""
  defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}

  def relevant(c: dict) -> dict[str, Any]:
    # A field that a run of an earlier version did not have took today's default.
    fields = {**defaults, **c.get('model', {})}
    model = {f'model.{k}': v for k, v in fields.items()
             if k not in RUNTIME_MODEL_FIELDS and k != 'remat'}
    optim = c.get('optim', {})
    return {'task': c.get('task'), **model,
            # These switch optimizer-state pieces on or off (clipping, AdamW's mask).
            'optim.weight_decay > 0': bool(optim.get('weight_decay')),
            'optim.grad_clip_norm > 0': bool(optim.get('grad_clip_norm'))}
  before, now = relevant(saved), relevant(config.to_dict())
  return [f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in sorted(set(before) | set(now))
          if before.get(k) != now.get(k)]


def check_resume(config: ml_collections.ConfigDict, saved: dict | None,
                 workdir: str | pathlib.Path, step: int) -> None:
  """Refuses to resume checkpoint `step` (whose config is `saved`) with a config that
  stores different arrays; writes nothing."""
  if saved is None:
    return
  differences = stored_differences(saved, config)
  if differences:
    listed = '; '.join(differences[:6]) + ('; ...' if len(differences) > 6 else '')
    raise CheckpointError(
        f'{workdir} holds a run (step {step}) whose config differs in what its checkpoints '
        f'store: {listed}. Resume with the run\'s own settings (see {workdir}/config.json) '
        'or train into another --workdir')

