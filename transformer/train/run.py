"""Load a trained run from its workdir: config, tokenizer, model and (averaged) parameters.

    run = load_run('runs/multi30k_ende', average_last=5)
    translate_texts(run.model, run.params, run.tokenizer, ['A dog runs.'])
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections
from flax import linen as nn

from transformer.config import ModelConfig
from transformer.data.tokenizers import load_tokenizer, synthetic_tokenizer
from transformer.train import checkpoint as checkpoint_lib
from transformer.train import loop
from transformer.train import optimizer as optimizer_lib


@dataclasses.dataclass
class Run:
  """A trained model and what it needs to read and write text."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model_config: ModelConfig
  model: nn.Module
  params: Any
  tokenizer: Any
  steps: list[int]          # the checkpoint step(s) whose parameters these are


def run_tokenizer(config: ml_collections.ConfigDict, workdir: pathlib.Path):
  """The tokenizer the run trained with: saved in the workdir, or rebuilt (synthetic)."""
  directory = pathlib.Path(config.data.get('tokenizer_dir') or workdir / 'tokenizer')
  if (directory / 'tokenizer.json').is_file():
    return load_tokenizer(directory)
  if config.data.tokenizer == 'synthetic':
    return synthetic_tokenizer(config.data.synthetic_vocab)
  raise FileNotFoundError(f'no tokenizer in {directory}')


def abstract_train_state(model, task: str, config: ml_collections.ConfigDict,
                         model_config: ModelConfig) -> Any:
  """Shapes, dtypes and single-device shardings of the run's TrainState (for restoring)."""
  schedule = optimizer_lib.make_schedule(config.optim, model_config.d_model,
                                         config.train.num_steps)
  tx = optimizer_lib.make_optimizer(config.optim, schedule)
  boxed = jax.eval_shape(loop.init_fn(model, task, tx), jax.random.PRNGKey(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      nn.meta.unbox(boxed))


def load_run(workdir: str | pathlib.Path, *, step: int | None = None,
             average_last: int = 1) -> Run:
  """The run's model with the parameters of `step` (default: the newest checkpoint), or
  the average of the newest `average_last` checkpoints."""
  workdir = pathlib.Path(workdir)
  checkpoint_dir = workdir / 'checkpoints'
  # (Checked first because a Checkpointer would create the folder.)
  checkpointer = (checkpoint_lib.Checkpointer(checkpoint_dir, asynchronous=False)
                  if checkpoint_dir.is_dir() else None)
  available = checkpointer.all_steps() if checkpointer else []
  if not available:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir}: train first with '
                            f'`python train.py --workdir {workdir}`')
  if step is not None and step not in available:
    raise ValueError(f'no checkpoint at step {step} in {checkpoint_dir}; have {available}')
  if average_last < 1:
    raise ValueError(f'average_last must be >= 1, got {average_last}')
  newest = available[-1] if step is None else step
  config = ml_collections.ConfigDict(checkpointer.restore_config(newest))
  tokenizer = run_tokenizer(config, workdir)
  model_config = loop.model_config(config, tokenizer.vocab_size)
  model = loop.MODEL_CLASSES[config.task](model_config)
  abstract = abstract_train_state(model, config.task, config, model_config)
  steps = [s for s in available if s <= newest][-average_last:]
  params = checkpoint_lib.average_params(checkpointer, steps, abstract)
  checkpointer.close()
  return Run(workdir, config, model_config, model, {'params': params}, tokenizer, steps)
