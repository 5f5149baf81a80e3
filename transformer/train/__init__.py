"""Training: state, losses, schedules, pure steps, strategies, checkpoints, metrics,
evaluation and the loop.

`Trainer`, `train_and_evaluate` (loop.py) and `TrainState` (step.py) are importable from
here; they load on first use, so that `transformer.tasks` can use the losses and metrics
of this package without importing the loop that uses the tasks.
"""

_EXPORTS = {'Trainer': 'loop', 'train_and_evaluate': 'loop', 'TrainState': 'step',
            'train_step': 'step', 'eval_step': 'step'}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  import importlib
  return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)


__all__ = list(_EXPORTS)
