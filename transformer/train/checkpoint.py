"""Orbax checkpoints of a run: the train state, the data iterator's position and the config.

Saves are asynchronous (the device-to-host copy happens before `save` returns, the disk
write in the background) and atomic: Orbax writes into a temporary folder and renames it
when complete, so a crash never leaves a half-written newest checkpoint behind. The newest
`max_to_keep` checkpoints are kept, plus the best one by `best_metric` when given (metrics
that are not finite never count as best). A checkpoint that fails to restore (a file lost
or truncated) is moved aside to `workdir/checkpoints_damaged/` by `quarantine`, never
deleted, and the run falls back to the one before it; with several processes a restore
that fails on one fails on all of them, so they fall back together.
"""

from __future__ import annotations

import asyncio
import math
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies
from orbax.checkpoint._src import asyncio_utils as ocp_asyncio

from transformer import models, storage
from transformer.train import strategy as strategy_lib


# The prefix of this manager's barrier names, set rather than left to Orbax (whose
# synchronous and asynchronous checkpointers default to different ones), and the name of
# the barrier that ends every restore.
_BARRIER_PREFIX = 'transformer'
_RESTORE_BARRIER = ocp.multihost.unique_barrier_key('Checkpointer:restore',
                                                    prefix=_BARRIER_PREFIX)


class FailedOnAnotherProcess(Exception):
  """A checkpoint that restored on this process but not on another one."""


def _run_in_a_new_loop(coro):
  """Orbax's `asyncio_utils._run_sync_via_new_loop`, but the loop's unfinished tasks are
  cancelled and awaited before it is closed.

  Orbax (0.12.8) closes the loop as it is: when one read of a restore fails, the others
  are left suspended on their TensorStore futures, and the garbage collector destroys them
  later, from whatever code it interrupts. That destruction can block in native code
  holding the GIL (TensorStore waits for a callback that waits for the GIL): a two-process
  fallback from a damaged checkpoint hung so, in CI and in 1 run in 2 under load, in a
  collection at its compile wait, at its end-of-run save, or in an explicit gc.collect().
  """
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    try:
      return loop.run_until_complete(coro)
    finally:
      left = [task for task in asyncio.all_tasks(loop) if not task.done()]
      for task in left:
        task.cancel()
      if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
  finally:
    asyncio.set_event_loop(None)
    loop.close()


if hasattr(ocp_asyncio, '_run_sync_via_new_loop'):
  ocp_asyncio._run_sync_via_new_loop = _run_in_a_new_loop


class Checkpointer:
  """A thin owner of an Orbax `CheckpointManager` under `workdir/checkpoints`."""

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3,
               best_metric: str | None = None, best_mode: str = 'min',
               asynchronous: bool = True):
    self.directory = storage.path(directory)   # a URL: Orbax writes to the bucket itself
    if not storage.is_url(self.directory):
      self.directory = self.directory.absolute()
    keep: list[Any] = [policies.LatestN(n=max_to_keep)]
    if best_metric:
      keep.append(policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                 reverse=best_mode == 'min', n=1,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=asynchronous,
        preservation_policy=policies.AnyPreservationPolicy(keep),
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=_BARRIER_PREFIX),
        create=True)
    self.best_metric = best_metric
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'data', 'config'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None,
           config: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
           force: bool = True) -> bool:
    if metrics is not None and not (self.best_metric in metrics
                                    and math.isfinite(metrics[self.best_metric])):
      metrics = None   # only a finite metric may make a checkpoint the best one
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(dict(data_state or {})),
                                config=ocp.args.JsonSave(dict(config))),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()
                                              if math.isfinite(v)},
        force=force)

  def restore(self, step: int, abstract_state: Any, *, scan_layers: bool | None = None
              ) -> tuple[Any, dict, dict]:
    """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with `.sharding`),
    so a checkpoint written on one mesh or device count loads onto another.

    `scan_layers`: the layout `abstract_state` has; a checkpoint whose model had the other
    one (its saved config says) is converted (`models.scan_params` / `unscan_params`).
    """
    if scan_layers is None:
      return self._restore(step, abstract_state)
    saved_scanned = bool(self.restore_config(step).get('model', {}).get('scan_layers', False))
    if saved_scanned != scan_layers:
      convert = models.unscan_params if saved_scanned else models.scan_params
      back = models.scan_params if saved_scanned else models.unscan_params
      shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
      # The saved layout is restored on the shardings XLA gives `back`'s outputs from the
      # run's own: each layer split as it will be (the stacked layer axis whole), so no
      # device ever holds the whole state (it had been restored replicated).
      saved = jax.jit(back).lower(abstract_state).compile()
      state, data, config = self._restore(step, strategy_lib.abstract(
          saved.out_info, saved.output_shardings))
      return jax.jit(convert, out_shardings=shardings)(state), data, config
    return self._restore(step, abstract_state)

  def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    restored = self._restore_items(step, state=ocp.args.StandardRestore(abstract_state),
                                   data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    return restored['state'], restored['data'], restored['config']

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    return self._restore_items(step, state=ocp.args.StandardRestore(abstract_state))['state']

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._restore_items(step, config=ocp.args.JsonRestore())['config']

  def _restore_items(self, step: int, **items) -> Any:
    """`manager.restore`, which fails on every process when it fails on one (each
    process reads its own shards, so a lost or truncated file may fail only some): they
    all go on to the same next call, and fall back together."""
    try:
      restored, error = self.manager.restore(step, args=ocp.args.Composite(**items)), None
    except Exception as e:   # re-raised below, on every process
      restored, error = None, e
      if jax.process_count() > 1:
        # Orbax ends every restore in a barrier across the processes, a collective (in
        # orbax-checkpoint 0.12.8: `sync_global_processes` at the end of
        # Checkpointer.restore), which a failed read never reached: the others wait in
        # it, and this process's next collective would meet theirs as a mismatch (gloo
        # aborts the process). It takes its part here. (Had Orbax renamed the barrier,
        # sync_global_devices would say that the names differ, rather than hang.)
        multihost_utils.sync_global_devices(_RESTORE_BARRIER)
    if jax.process_count() > 1:
      failed = multihost_utils.process_allgather(np.array(error is not None))
      if error is None and failed.any():
        where = ', '.join(map(str, np.flatnonzero(failed)))
        raise FailedOnAnotherProcess(f'process {where} could not restore it')
    if error is not None:
      raise error
    return restored

  def quarantine(self, step: int, *, move: bool = True) -> storage.AnyPath:
    """Moves a damaged checkpoint out of the manager's sight (to
    `../checkpoints_damaged/<step>-<time>`), where a user can still inspect it.

    With several processes every one calls it, and one moves the folder (`move`, process
    0); all of them then forget the step, so that each saves it again when the run gets
    there (a manager that still listed it would refuse: "already exists").
    """
    target = self.directory.parent / 'checkpoints_damaged' / f'{step}-{int(time.time())}'
    if move:
      storage.move_tree(self.directory / str(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
