"""`python -m transformer import --hf DIR --workdir RUN`: a Hugging Face model folder (or a
Hub id, ORG/NAME[@REVISION], fetched by `transformer.hf.hub`) becomes a run folder, as if
`train.py` had written it at step 0.

    RUN/checkpoints/0/   our Orbax checkpoint: a TrainState with the converted parameters
                         and a fresh optimizer state, data state {}, the training config
    RUN/tokenizer/       the checkpoint's own tokenizer (`transformer.data.
                         pretrained_tokenizers`), with its special ids
    RUN/config.json      the training config: base_config() (or --config FILE's) with the
                         task of the family, the converted model block, and
                         data.tokenizer = 'pretrained' (the saved tokenizer, never retrained)
    RUN/config.py        that config for train.py: fine-tune with
                         `python train.py --config RUN/config.py --workdir RUN
                          --config.data.source=... --config.data.path=...`

`translate`, `generate` and `evaluate` read it like any run. Everything is written into a
temporary folder beside RUN and renamed at the end, so a failure leaves nothing behind; a
RUN that exists and is not empty is refused.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from transformer import hf, models
from transformer.data import pretrained_tokenizers
from transformer.errors import ConfigError, MissingFileError, UserError

# The data.tokenizer value of a run whose tokenizer is saved in its folder and never trained.
PRETRAINED_TOKENIZER = 'pretrained'
TASKS = {models.DecoderLM: 'lm', models.EncoderModel: 'mlm', models.Transformer: 'translation'}
FINE_TUNING_OPTIM = dict(schedule='warmup_linear', learning_rate=5e-5, warmup_steps=100,
                         b2=0.999, eps=1e-8)

CONFIG_PY = '''"""The training config of this imported run (config.json beside this file, over the
defaults), for fine-tuning: python train.py --config {workdir}/config.py --workdir {workdir}
--config.data.source=... --config.data.path=... (any --config.* override works)."""

import json
import pathlib

from transformer.train.defaults import base_config


def get_config():
  config = base_config()
  config.update(json.loads((pathlib.Path(__file__).parent / 'config.json').read_text()))
  return config
'''


def _base_config(config_file: str | os.PathLike | None) -> ml_collections.ConfigDict:
  from transformer.train.defaults import base_config, config_from_file
  if config_file is None:
    config = base_config()
    config.optim.update(FINE_TUNING_OPTIM)
    return config
  config_file = pathlib.Path(config_file)
  if not config_file.is_file():
    raise MissingFileError(f'no config file {config_file}')
  return config_from_file(config_file)


def training_config(model, config_file=None) -> ml_collections.ConfigDict:
  """The run's config: the family's task, the converted model, the saved tokenizer."""
  cfg = model.config
  config = _base_config(config_file)
  config.task = TASKS[type(model)]
  config.model.update(dataclasses.asdict(cfg))
  config.data.tokenizer = PRETRAINED_TOKENIZER
  config.data.tokenizer_dir = None            # RUN/tokenizer, wherever RUN moves
  config.data.max_len = min(config.data.max_len, cfg.max_len)
  return config


def _check_tokenizer(tokenizer, cfg, folder: pathlib.Path) -> None:
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ConfigError(f'{folder}: the tokenizer has {tokenizer.vocab_size} ids, the model\'s '
                      f'embedding {cfg.vocab_size}')
  if cfg.pad_id >= 0 and tokenizer.pad_id not in (None, cfg.pad_id):
    raise ConfigError(f'{folder}: the tokenizer pads with id {tokenizer.pad_id}, config.json '
                      f'with {cfg.pad_id}')


def import_run(hf_folder: str | os.PathLike, workdir: str | os.PathLike,
               config_file: str | os.PathLike | None = None) -> pathlib.Path:
  """Converts `hf_folder` (a folder or a Hub id) into the run folder `workdir` (see the
  module docstring)."""
  from transformer.train import experiment as experiment_lib
  from transformer.train import checkpoint as checkpoint_lib
  from transformer.train import step as step_lib
  from transformer.train.trained_run import one_device_mesh

  workdir = pathlib.Path(workdir)
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise UserError(f'{workdir} exists and is not empty: import into a new --workdir')
  hf_folder = hf.hub.resolve(hf_folder)      # a Hub id: its snapshot in the Hub's cache
  model, variables = hf.load(hf_folder)
  tokenizer = pretrained_tokenizers.from_hf_folder(hf_folder)
  _check_tokenizer(tokenizer, model.config, hf_folder)
  config = training_config(model, config_file)
  experiment = experiment_lib.build(config, vocab_size=model.config.vocab_size,
                                    mesh=one_device_mesh())
  state = step_lib.TrainState.create(apply_fn=experiment.model.apply,
                                     params=variables['params'], tx=experiment.optimizer)
  state = state.replace(step=jnp.zeros((), jnp.int32))
  if (jax.tree.structure(state) != jax.tree.structure(experiment.abstract_state)
      or jax.tree.map(jnp.shape, state) != jax.tree.map(jnp.shape, experiment.abstract_state)):
    raise AssertionError('the converted state does not match the run\'s abstract state')

  scratch = workdir.parent / f'.{workdir.name}.importing-{os.getpid()}'
  shutil.rmtree(scratch, ignore_errors=True)
  try:
    scratch.mkdir(parents=True)
    tokenizer.save(scratch / 'tokenizer')
    checkpointer = checkpoint_lib.Checkpointer(scratch / 'checkpoints', asynchronous=False)
    checkpointer.save(0, jax.device_get(state), {}, config.to_dict())
    checkpointer.wait()
    checkpointer.close()
    (scratch / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    (scratch / 'config.py').write_text(CONFIG_PY.format(workdir=workdir))
    if workdir.exists():
      workdir.rmdir()                         # empty (checked above)
    scratch.rename(workdir)
  except BaseException:
    shutil.rmtree(scratch, ignore_errors=True)
    raise
  return workdir
