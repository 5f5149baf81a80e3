"""The run folder's guards: one trainer at a time, and resuming only a compatible run.

    with WorkdirLock(workdir):                     # a second trainer gets a clear refusal
      check_resume(config, workdir)                # a different model: one clear line
      ...
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import socket
import time
from typing import Any

import ml_collections

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
  """

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.path = pathlib.Path(workdir) / '.lock'
    self.enabled = enabled
    self._file = None

  def __enter__(self):
    if not self.enabled:
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
    self._file.write(f'PID {os.getpid()} on host {socket.gethostname()} '
                     f'(since {time.strftime("%Y-%m-%d %H:%M:%S")})')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self.path.unlink(missing_ok=True)
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


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

