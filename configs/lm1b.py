"""Decoder-only language model on TFDS `lm1b` (One Billion Word), sentences packed.

Pre-LN GPT-style decoder with RoPE, SentencePiece vocabulary of 32000, bfloat16 compute.
Needs the TFDS download (not offline).
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'lm'
  c.model.update(d_model=512, num_heads=8, mlp_dim=2048, num_layers=6, max_len=256,
                 dropout_rate=0.1, activation='gelu', pre_norm=True, position='rope',
                 dtype='bfloat16')
  c.data.update(source='tfds', tfds_name='lm1b', tfds_text_key='text',
                tokenizer='sentencepiece', vocab_size=32_000, lm_format='sentences',
                max_len=128, pack=True, overlong='truncate')
  c.optim.update(schedule='warmup_cosine', learning_rate=1e-3, warmup_steps=1000,
                 b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0)
  c.train.update(batch_size=256, num_steps=100_000, log_every=100, eval_every=5000,
                 eval_batches=100, checkpoint_every=2000)
  return c
