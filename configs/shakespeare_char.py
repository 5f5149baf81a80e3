"""Character-level GPT on Tiny Shakespeare with nanoGPT's CPU settings.

nanoGPT (README, "I only have a macbook"): 4 layers, 4 heads, width 128, context 64,
batch 12, 2000 iterations, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4,
AdamW (0.9, 0.99), weight decay 0.1, clip 1.0, dropout 0. Its architecture is GPT-2's:
pre-LN, GELU, learned positions, tied embeddings, no sqrt(d) scaling.
Validation loss: mean per-character cross-entropy over the last 10% of the file.
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'lm'
  c.model.update(d_model=128, num_heads=4, mlp_dim=512, num_layers=4, max_len=64,
                 dropout_rate=0.0, activation='gelu', pre_norm=True, position='learned',
                 scale_embeddings=False, use_bias=False,
                 pad_id=-1)   # the 65 characters use every id, '\n' is 0: nothing is padding
  c.data.update(source='text', path='../shared/data/tinyshakespeare/input.txt',
                tokenizer='char', lm_format='windows', valid_fraction=0.1, max_len=64)
  c.optim.update(schedule='warmup_cosine', learning_rate=1e-3, warmup_steps=100,
                 decay_steps=2000, end_learning_rate=1e-4, b1=0.9, b2=0.99, eps=1e-8,
                 weight_decay=0.1, grad_clip_norm=1.0)
  c.train.update(batch_size=12, num_steps=2000, log_every=100, eval_every=2000,
                 checkpoint_every=1000, max_to_keep=2, best_metric='',
                 steps_per_call=10,   # a 30 ms step: dispatch once per 10 steps
                 eval_batch_size=48)
  c.cpu_devices = 2   # on a CPU: two XLA devices of 6 rows each keep 2 cores busier than one
  c.parallelism = 'pmap'   # its gradient sum is one flat all-reduce, jit's one per array
  return c
