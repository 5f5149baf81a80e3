"""`base_config()`: every field a training config has, with defaults and a comment each.

Experiment files in `configs/` start from this and change what differs, so that a field
added here reaches every experiment.
"""

import ml_collections
from ml_collections import config_dict

from transformer.data import default_data_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'translation'          # 'translation' | 'lm' | 'mlm' | 'classification'
  c.seed = 0                      # parameters, dropout and data order
  c.parallelism = 'jit'           # 'jit' over the mesh, or 'pmap' (plain data parallel)
  c.cpu_devices = 0               # hosts without accelerators: split the CPU into this many
                                  # XLA devices (data parallel); 0 = JAX's default (one)

  # The fields of transformer.ModelConfig (see transformer/config.py); vocab_size 0 = the
  # tokenizer's.
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=0,
      target_vocab_size=config_dict.placeholder(int),
      d_model=512,                # D
      num_heads=8,                # N
      num_kv_heads=config_dict.placeholder(int),  # K; None = num_heads
      head_dim=config_dict.placeholder(int),      # H; None = d_model // num_heads
      mlp_dim=2048,               # F
      num_layers=6,               # encoder (and decoder) layers
      num_decoder_layers=config_dict.placeholder(int),
      max_len=256,                # positional-encoding length
      dropout_rate=0.1,           # P_drop
      attention_dropout_rate=0.0,
      activation='relu',          # 'relu' | 'gelu' | 'swiglu'
      norm='layernorm',           # 'layernorm' | 'rmsnorm'
      pre_norm=False,             # False: post-LN (paper)
      position='sinusoidal',      # 'sinusoidal' | 'learned' | 'rope'
      use_bias=True,
      share_embeddings=True,      # one source/target embedding (shared vocabulary)
      tie_output=True,            # output projection = embedding transposed
      scale_embeddings=True,      # embeddings * sqrt(d_model)
      num_classes=0,              # classification head size (task 'classification')
      pad_id=0,                   # -1: no padding id (character LMs use every id)
      dtype='float32',            # compute dtype: 'bfloat16' on accelerators
      param_dtype='float32',
      attention_impl=config_dict.placeholder(str),  # None | 'xla' | 'cudnn'
      remat=False,                # recompute layer activations in the backward pass
      cpu_matmul=config_dict.placeholder(bool),  # None: on CPUs (transformer/matmul.py)
  ))

  c.data = default_data_config()  # fields documented in transformer/data/__init__.py

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
      steps_per_call=1,           # > 1: that many steps in one compiled loop (small models)
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
      max_extra_len=50,           # output length <= input length + 50
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      num_processes=1,            # > 1: jax.distributed.initialize with the fields below
      process_id=0,
      coordinator_address='',     # host:port of process 0
      auto=False,                 # True: jax.distributed.initialize() discovers the cluster
  ))
  return c
