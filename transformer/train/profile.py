"""`train.profile_steps = (first, count)`: a `jax.profiler` trace of `count` train steps from
step `first` (after it), written under `workdir/profile` where TensorBoard's profile plugin
and XProf read it (`tensorboard --logdir WORKDIR/profile`, or `xprof WORKDIR/profile`).

The trace starts before the call that runs step `first + 1` and stops once the call that
reaches step `first + count` has finished (the state is waited for), so with
`steps_per_call > 1` it covers whole calls. (0, 0) or a count of 0: no trace.
"""

from __future__ import annotations

import pathlib

import jax


class StepProfiler:
  def __init__(self, directory: pathlib.Path, first: int = 0, count: int = 0):
    self.directory = pathlib.Path(directory)
    self.first, self.count = int(first), int(count)
    self.active = False

  def before(self, step: int) -> None:
    """Called before the call that runs the steps after `step`."""
    if self.count > 0 and not self.active and self.first <= step < self.first + self.count:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after(self, step: int, state) -> None:
    """Called once the steps up to `step` have been dispatched."""
    if self.active and step >= self.first + self.count:
      self.stop(state)

  def stop(self, state=None) -> None:
    if self.active:
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:   # a run that ends (or stops) inside the window
    self.stop()
