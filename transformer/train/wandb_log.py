"""Weights & Biases logging: `train.wandb_project` (and `train.wandb_entity`) send every
scalar the run writes (train and eval metrics) to a W&B run as well.

The W&B run is named after the workdir and its id is kept in `WORKDIR/wandb_run_id`, so a
resumed training run continues the same W&B run; W&B's files go to `WORKDIR/wandb/`.
`WANDB_MODE=offline` (or `WANDB_MODE=disabled`) and W&B's other variables work as usual.
wandb is an optional dependency: `pip install 'transformer[wandb]'`.
"""

from __future__ import annotations

import pathlib
import secrets
import string
from typing import Any, Mapping

import ml_collections

from transformer.errors import ConfigError

RUN_ID_FILE = 'wandb_run_id'


def wanted(config: ml_collections.ConfigDict) -> bool:
  return bool(config.train.get('wandb_project'))


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses, in one line, a run that asks for W&B where wandb is not installed."""
  if not wanted(config):
    return
  try:
    import wandb  # noqa: F401
  except ImportError:
    raise ConfigError(f'train.wandb_project={config.train.wandb_project!r} needs wandb, '
                      "which is not installed: pip install 'transformer[wandb]' (or "
                      "pip install wandb), or leave train.wandb_project empty") from None


class WandbWriter:
  """The run's metric writer, with every scalar also logged to a W&B run. Everything else
  (flush, close, any other attribute) is the wrapped writer's."""

  def __init__(self, writer, run):
    self._writer, self._run = writer, run

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self._writer.write(step, scalars)
    self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

  def close(self) -> None:
    self._writer.close()
    if self._run is not None:
      self._run.finish()
      self._run = None

  def __getattr__(self, name: str) -> Any:
    return getattr(self._writer, name)


def _run_id(workdir: pathlib.Path) -> str:
  """The workdir's W&B run id: the one kept there, else a new one (kept for resumption)."""
  path = workdir / RUN_ID_FILE
  if path.is_file() and path.read_text().strip():
    return path.read_text().strip()
  run_id = ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
  path.write_text(run_id + '\n')
  return run_id


def attach(writer, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
           enabled: bool = True):
  """`writer`, or with `train.wandb_project` set (on the process that writes metrics) a
  `WandbWriter` around it logging to the workdir's W&B run."""
  if not (enabled and wanted(config)):
    return writer
  check(config)
  import wandb
  workdir = pathlib.Path(workdir)
  run = wandb.init(project=config.train.wandb_project,
                   entity=config.train.get('wandb_entity') or None,
                   name=workdir.resolve().name, id=_run_id(workdir), resume='allow',
                   dir=str(workdir), config=config.to_dict())
  return WandbWriter(writer, run)
