"""`base_config()`: every field a training config has, with defaults and a comment each.

The comment that ends a field's line, with the comment-only lines below it indented past
the field, is the field's meaning: `python train.py --help` and docs/config.md read it from
here (`transformer.train.config_reference`), and a field without one fails the tests. The
model's fields are documented in `transformer/config.py`, the data's in
`transformer/data/config.py`, the same way.

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
      warmup_steps=4000,          # linear warmup from 0 to the peak
      decay_steps=0,              # cosine length; 0 = train.num_steps
      end_learning_rate=0.0,      # where 'warmup_cosine' / 'warmup_linear' end
      lr_scale=1.0,               # multiplier of the 'paper' schedule
      b1=0.9,                     # Adam's beta1 (the paper's, section 5.3)
      b2=0.98,                    # Adam's beta2 (the paper's)
      eps=1e-9,                   # Adam's epsilon (the paper's)
      weight_decay=0.0,           # > 0: AdamW, matrices only
      grad_clip_norm=0.0,         # 0: no clipping
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,              # global rows per step (packed rows when data.pack)
      num_steps=10_000,           # optimizer steps of the whole run (a resumed run goes on
                                  # to this step)
      grad_accum_steps=1,         # micro-batches per step (batch_size must divide)
      skip_nonfinite=0,           # steps whose loss or gradient is not finite: 0 stops the
                                  # run at the first (no update is ever applied); N skips
                                  # up to N such updates, logging each, then stops
      steps_per_call=1,           # > 1: that many steps in one compiled loop (small models)
      profile_steps=(0, 0),       # (first, count): a jax.profiler trace of steps first+1..
                                  # first+count in workdir/profile (TensorBoard/XProf)
      label_smoothing=0.0,        # paper: 0.1
      log_every=100,              # steps between train metric lines (TensorBoard, metrics.jsonl)
      eval_every=1000,            # steps between evaluations on the validation split
      eval_batches=0,             # 0 = the whole validation split
      eval_batch_size=0,          # rows per evaluation batch; 0 = batch_size
      checkpoint_every=1000,      # steps between checkpoints (and the last step)
      max_to_keep=3,              # newest checkpoints kept
      best_metric='eval/loss',    # also keep the best checkpoint by this ('' for none)
      best_mode='min',            # 'min' | 'max': which end of best_metric is best
      eval_bleu=False,            # translation: decode the validation split, log eval/bleu
                                  # (eval/decoded_exact_match where every reference is one
                                  # word, as in the synthetic tasks: BLEU is 0 there)
      bleu_examples=0,            # 0 = the whole split
      num_examples_to_show=3,     # decoded examples printed at the end
      wandb_project='',           # a Weights & Biases project: every metric goes there too
                                  # (needs the wandb extra; '' for none)
      wandb_entity='',            # the W&B entity (user or team) of wandb_project; '' =
                                  # your default
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                    # data-parallel devices; -1: the devices left over
      fsdp=1,                     # devices that shard parameters and optimizer state
      tensor=1,                   # devices that shard each layer's matrices (Megatron)
  ))
  c.decode = ml_collections.ConfigDict(dict(
      beam_size=4,                # beam width (1: greedy; the paper's 4, section 6.1)
      alpha=0.6,                  # length penalty exponent (the paper's 0.6)
      max_extra_len=MAX_EXTRA_LEN,  # output length <= input length + this (paper: 50)
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1,            # > 1: jax.distributed.initialize with the fields below
      process_id=0,               # this process's index (0 is the coordinator)
      coordinator_address='',     # host:port of process 0
      auto=False,                 # True: jax.distributed.initialize() discovers the cluster
                                  # (TPU VM pods, SLURM, Open MPI, Kubernetes)
      heartbeat_timeout_seconds=60,  # a process silent this long is lost: the others stop
      shutdown_timeout_seconds=30,   # how long a finishing process waits for the others
  ))
  return c


def config_from_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as `--config PATH` loads it (without overrides)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
