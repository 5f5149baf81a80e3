"""The offline default: a small encoder-decoder learns to reverse random digit strings.

No files, no network: the data are generated from the seed.
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'translation'
  c.model.update(d_model=128, num_heads=4, mlp_dim=512, num_layers=2, max_len=64,
                 dropout_rate=0.0)     # unlimited fresh data: nothing to regularise
  c.data.update(
      source='synthetic', tokenizer='synthetic',
      synthetic_rule='reverse',        # 'copy' | 'reverse' | 'sort'
      synthetic_vocab=10,              # the digits 0-9
      synthetic_min_len=4, synthetic_max_len=16,
      synthetic_train_size=200_000,
      synthetic_eval_size=1_000,       # held-out strings in valid and test
      max_len=24,                      # row length; rows pack several strings
      pack=True)
  c.optim.update(schedule='warmup_cosine', learning_rate=2e-3, warmup_steps=200,
                 end_learning_rate=1e-5, grad_clip_norm=1.0)
  c.train.update(batch_size=64, num_steps=600, log_every=50, eval_every=200,
                 checkpoint_every=200, max_to_keep=2, num_examples_to_show=4,
                 steps_per_call=10)   # small steps: one dispatch per 10 of them
  return c
