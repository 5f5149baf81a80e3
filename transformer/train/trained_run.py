"""Load a trained run from its workdir: config, tokenizer, model and (averaged) parameters.

    run = load_run('runs/multi30k_ende', average_last=5)
    translate_texts(run.model, run.params, run.tokenizer, ['A dog runs.'])

The model and the shapes to restore come from `transformer.train.experiment.build` on one
device, like everything else that needs a model from a config.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from transformer.train import experiment as experiment_lib
from transformer import sharding, storage
from transformer.data.tokenizers import load_tokenizer, synthetic_tokenizer
from transformer.errors import CheckpointError, UserError, typed_line
from transformer.train import checkpoint as checkpoint_lib


@dataclasses.dataclass
class Run:
  """A trained model and what it needs to read and write text."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  experiment: experiment_lib.Experiment   # built on one device, without data
  params: Any               # {'params': ...}, on one device
  tokenizer: Any
  steps: list[int]          # the checkpoint step(s) whose parameters these are

  @property
  def model(self):
    return self.experiment.model


def run_tokenizer(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """The tokenizer the run trained with: saved in the workdir, or rebuilt (synthetic)."""
  directory = storage.path(config.data.tokenizer_dir or workdir / 'tokenizer')
  if storage.is_url(directory) and (directory / 'tokenizer.json').is_file():
    # SentencePiece opens a local file: a copy in the cache, per workdir URL.
    local = storage.local_dir(workdir) / 'tokenizer'
    storage.download_tree(directory, local)
    directory = local
  if (directory / 'tokenizer.json').is_file():
    return load_tokenizer(directory)
  if config.data.tokenizer == 'synthetic':
    return synthetic_tokenizer(config.data.synthetic_vocab)
  raise CheckpointError(f'no tokenizer in {directory}: is {workdir} a run folder?')


def one_device_mesh():
  return sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])


def load_run(workdir: str | pathlib.Path, *, step: int | None = None, average_last: int = 1,
             report: Callable[[str], None] | None = None) -> Run:
  """The run's model with the parameters of `step` (default: the newest checkpoint), or
  the average of the newest `average_last` checkpoints up to it.

  A checkpoint that does not restore (a file lost or truncated) is skipped for the ones
  before it, and `report` (e.g. a warning printer) is told; nothing is moved or deleted.
  `Run.steps` lists the checkpoints used (fewer than `average_last` if the run has fewer).
  """
  workdir = storage.path(workdir)   # a URL (gs://, s3://): etils.epath
  storage.check_bucket(workdir)
  checkpoint_dir = workdir / 'checkpoints'
  # (Checked first because a Checkpointer would create the folder.)
  checkpointer = (checkpoint_lib.Checkpointer(checkpoint_dir, asynchronous=False)
                  if checkpoint_dir.is_dir() else None)
  available = checkpointer.all_steps() if checkpointer else []
  if not available:
    raise CheckpointError(f'no checkpoint in {checkpoint_dir}: train first with '
                          f'`python train.py --workdir {workdir}`')
  if step is not None and step not in available:
    raise CheckpointError(f'no checkpoint at step {step} in {checkpoint_dir}; have {available}')
  if average_last < 1:
    raise UserError(f'--average_last must be >= 1, got {average_last}')
  report = report or (lambda message: None)
  candidates = [s for s in available if step is None or s <= step][::-1]   # newest first
  experiment, config, tokenizer, steps, total = None, None, None, [], None
  for candidate in candidates:
    try:
      if experiment is None:
        config = ml_collections.ConfigDict(checkpointer.restore_config(candidate))
        tokenizer = run_tokenizer(config, workdir)
        experiment = experiment_lib.build(config, vocab_size=tokenizer.vocab_size,
                                          mesh=one_device_mesh())
      params = checkpointer.restore_state(candidate, experiment.abstract_state).params
      steps.append(candidate)
    except UserError:
      raise
    except Exception as error:   # a damaged checkpoint
      report(f'checkpoint {candidate} in {checkpoint_dir} does not restore '
             f'({typed_line(error)}); using the ones before it')
      continue
    # The paper (section 6.1) averages the last 5 checkpoints of its base models: a sum
    # in float32, one checkpoint in memory at a time.
    as_float = jax.tree.map(lambda x: x.astype('float32'), params)
    total = as_float if total is None else jax.tree.map(jnp.add, total, as_float)
    if len(steps) == average_last:
      break
  checkpointer.close()
  if not steps:
    raise CheckpointError(f'no checkpoint in {checkpoint_dir} restores (all '
                          f'{len(candidates)} are damaged)')
  averaged = jax.tree.map(lambda t, x: (t / len(steps)).astype(x.dtype), total, params)
  return Run(workdir, config, experiment, {'params': averaged}, tokenizer, steps[::-1])
