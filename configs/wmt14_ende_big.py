"""The paper's big model on WMT 2014 English -> German (Table 3, "big": 213M parameters).

As `wmt14_ende_base.py` with d_model 1024, d_ff 4096, 16 heads, P_drop 0.3 and 300k steps.
"""

from configs import wmt14_ende_base


def get_config():
  c = wmt14_ende_base.get_config()
  c.model.update(d_model=1024, num_heads=16, mlp_dim=4096, dropout_rate=0.3)
  c.train.update(num_steps=300_000)
  return c
