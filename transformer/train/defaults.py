"""`base_config()`: every field a training config has, with defaults and a comment each.

Experiment files in `configs/` start from this and change what differs, so that a field
added here reaches every experiment; one that varies another experiment starts from that
file's config (`config_from_file`).
"""

import dataclasses
import importlib.util
import os
import pathlib
import typing

import ml_collections
from ml_collections import config_dict

from transformer.config import ModelConfig
from transformer.data.config import default_data_config
from transformer.inference import MAX_EXTRA_LEN


def model_block() -> ml_collections.ConfigDict:
  """`ModelConfig`'s fields and defaults as a ConfigDict (None defaults become typed
  placeholders, so that `--config.model.num_kv_heads=2` parses)."""
  hints = typing.get_type_hints(ModelConfig)
  block = {}
  for field in dataclasses.fields(ModelConfig):
    if field.default is None:
      kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
      block[field.name] = config_dict.placeholder(kinds[0])
    else:
      block[field.name] = field.default
  return ml_collections.ConfigDict(block)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'translation'          # a name in transformer.tasks.TASKS: 'translation' | 'lm' |
                                  # 'mlm' | 'classification'
  c.seed = 0                      # parameters, dropout and data order
  c.parallelism = 'jit'           # 'jit' over the mesh, or 'pmap' (plain data parallel)
  c.cpu_devices = 0               # hosts without accelerators: split the CPU into this many
                                  # XLA devices (data parallel); 0 = JAX's default (one)

  # The fields of transformer.ModelConfig with its defaults (the paper's base model; each
  # field is documented in transformer/config.py). vocab_size None: the tokenizer's.
  c.model = model_block()

  c.data = default_data_config()  # fields documented in transformer/data/config.py

  c.optim = ml_collections.ConfigDict(dict(
      schedule='paper',           # 'paper' | 'warmup_cosine' | 'warmup_linear' | 'constant'
      learning_rate=1e-3,         # peak (not used by 'paper')
      warmup_steps=4000,
      decay_steps=0,              # cosine length; 0 = train.num_steps
      end_learning_rate=0.0,
      lr_scale=1.0,               # multiplier of the 'paper' schedule
      b1=0.9, b2=0.98, eps=1e-9,  # Adam as in the paper (section 5.3)
      weight_decay=0.0,           # > 0: AdamW, matrices only
      grad_clip_norm=0.0,         # 0: no clipping
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,              # global rows per step (packed rows when data.pack)
      num_steps=10_000,
      grad_accum_steps=1,         # micro-batches per step (batch_size must divide)
      skip_nonfinite=0,           # steps whose loss or gradient is not finite: 0 stops the
                                  # run at the first (no update is ever applied); N skips
                                  # up to N such updates, logging each, then stops
      steps_per_call=1,           # > 1: that many steps in one compiled loop (small models)
      profile_steps=(0, 0),       # (first, count): a jax.profiler trace of steps first+1..
                                  # first+count in workdir/profile (TensorBoard/XProf)
      label_smoothing=0.0,        # paper: 0.1
      log_every=100,
      eval_every=1000,
      eval_batches=0,             # 0 = the whole validation split
      eval_batch_size=0,          # rows per evaluation batch; 0 = batch_size
      checkpoint_every=1000,
      max_to_keep=3,              # newest checkpoints kept
      best_metric='eval/loss',    # also keep the best checkpoint by this ('' for none)
      best_mode='min',
      eval_bleu=False,            # translation: decode the validation split, log eval/bleu
      bleu_examples=0,            # 0 = the whole split
      num_examples_to_show=3,     # decoded examples printed at the end
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: the rest
  c.decode = ml_collections.ConfigDict(dict(
      beam_size=4, alpha=0.6,     # the paper's beam search (section 6.1)
      max_extra_len=MAX_EXTRA_LEN,  # output length <= input length + this (paper: 50)
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1,            # > 1: jax.distributed.initialize with the fields below
      process_id=0,
      coordinator_address='',     # host:port of process 0
      auto=False,                 # True: jax.distributed.initialize() discovers the cluster
  ))
  return c


def config_from_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config PATH` loads it (without overrides)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
