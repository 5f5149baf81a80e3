"""Checkpoint retention: the newest `max_to_keep` plus the best by the chosen metric."""

import jax.numpy as jnp
import numpy as np

from transformer.train import checkpoint as checkpoint_lib


def test_max_to_keep_keeps_the_newest_and_the_best(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints', max_to_keep=2,
                                             best_metric='eval/loss', asynchronous=False)
  losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0, 5: 5.0}
  for step, loss in losses.items():
    state = {'w': jnp.full((2,), float(step))}
    checkpointer.save(step, state, {'next_index': step}, {'step': step},
                      metrics={'eval/loss': loss})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 4, 5]   # best (2) + newest two
  restored, data, config = checkpointer.restore(2, {'w': jnp.zeros((2,))})
  np.testing.assert_array_equal(restored['w'], [2.0, 2.0])
  assert data == {'next_index': 2} and config == {'step': 2}


def test_without_a_best_metric_only_the_newest_are_kept(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints', max_to_keep=2,
                                             asynchronous=False)
  for step in range(1, 5):
    checkpointer.save(step, {'w': jnp.zeros(1)}, {}, {}, metrics={'eval/loss': 1.0 / step})
  checkpointer.wait()
  assert checkpointer.all_steps() == [3, 4]
