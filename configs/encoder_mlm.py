"""Encoder-only masked-LM pretraining (BERT's 15% / 80-10-10 rule) on a local text file.

Defaults to Tiny Shakespeare lines with a small SentencePiece vocabulary.
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'mlm'
  c.model.update(d_model=256, num_heads=4, mlp_dim=1024, num_layers=4, max_len=128,
                 dropout_rate=0.1, activation='gelu', pre_norm=True, position='learned')
  c.data.update(source='text', path='../shared/data/tinyshakespeare/input.txt',
                tokenizer='sentencepiece', vocab_size=2000, lm_format='sentences',
                max_len=128, pack=True, overlong='truncate', mlm_probability=0.15)
  c.optim.update(schedule='warmup_linear', learning_rate=5e-4, warmup_steps=500,
                 b2=0.999, eps=1e-6, weight_decay=0.01, grad_clip_norm=1.0)
  c.train.update(batch_size=32, num_steps=5000, log_every=100, eval_every=1000,
                 checkpoint_every=1000)
  return c
