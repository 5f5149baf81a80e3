"""Multi30k en -> de in 40 minutes on a 2-core CPU: `multi30k_ende.py`'s model and data,
trained for 1800 steps instead of 3000.

The same model (post-LN, 3+3 layers, d_model 256), vocabulary, batch and regularisation;
a schedule that spends its steps where a short run needs them: linear warmup to 3e-3 over
500 steps, then a linear decay to zero at the last step (the paper's inverse square root
never anneals, which a short run cannot afford), gradients clipped at norm 1 against the
post-LN model's early spikes, and a checkpoint every 100 steps so that the last five can
be averaged (`python -m transformer evaluate ... --average_last 5`). BLEU on 200
validation sentences every 600 steps.

Measured results: `benchmarks/RESULTS.md`, "Multi30k in 40 minutes".
"""

import pathlib

from transformer.train.defaults import config_from_file


def get_config():
  c = config_from_file(pathlib.Path(__file__).with_name('multi30k_ende.py'))
  c.optim.update(schedule='warmup_linear', learning_rate=3e-3, warmup_steps=500,
                 end_learning_rate=0.0, grad_clip_norm=1.0)
  c.train.update(num_steps=1800, eval_every=600, checkpoint_every=100, max_to_keep=5)
  return c
