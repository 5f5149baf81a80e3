"""Learning-rate schedules and the optimizer built from the config's optim section."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from transformer.train import optimizer as optimizer_lib


def test_paper_schedule_formula():
  schedule = optimizer_lib.paper_schedule(d_model=512, warmup_steps=4000)
  for step in (1, 100, 4000, 10000):
    expected = 512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
    np.testing.assert_allclose(schedule(step - 1), expected, rtol=1e-6)
  # Rises during warmup, peaks at warmup, then decays as 1/sqrt(step).
  assert schedule(3998) > schedule(100) and schedule(3999) > schedule(8000)


def optim_config(**changes):
  base = dict(schedule='warmup_cosine', learning_rate=1e-3, warmup_steps=10, decay_steps=0,
              end_learning_rate=1e-4, lr_scale=1.0, b1=0.9, b2=0.99, eps=1e-8,
              weight_decay=0.1, grad_clip_norm=1.0)
  base.update(changes)
  return ml_collections.ConfigDict(base)


def test_warmup_cosine_schedule_endpoints():
  schedule = optimizer_lib.make_schedule(optim_config(), d_model=8, total_steps=100)
  assert schedule(0) == 0.0
  np.testing.assert_allclose(schedule(10), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 1e-4, rtol=1e-5)
  with pytest.raises(ValueError, match='unknown schedule'):
    optimizer_lib.make_schedule(optim_config(schedule='nope'), 8, 100)


def test_schedule_values_at_chosen_steps():
  """Each schedule against its formula, written out here (optax counts updates from 0)."""
  total, warmup, peak, end = 100, 10, 1e-3, 1e-4
  cosine = optimizer_lib.make_schedule(optim_config(), d_model=8, total_steps=total)
  linear = optimizer_lib.make_schedule(optim_config(schedule='warmup_linear'), 8, total)
  constant = optimizer_lib.make_schedule(optim_config(schedule='constant'), 8, total)
  paper = optimizer_lib.make_schedule(optim_config(schedule='paper', lr_scale=2.0), 64, total)
  for step in (0, 5, 10, 40, 55, 99, 100):
    ramp = peak * step / warmup
    decay = (step - warmup) / (total - warmup)
    expected_cosine = ramp if step < warmup else end + (peak - end) * 0.5 * (
        1 + np.cos(np.pi * decay))
    expected_linear = ramp if step < warmup else peak + (end - peak) * decay
    np.testing.assert_allclose(cosine(step), expected_cosine, rtol=1e-5, err_msg=f'{step}')
    np.testing.assert_allclose(linear(step), expected_linear, rtol=1e-5, err_msg=f'{step}')
    np.testing.assert_allclose(constant(step), peak, rtol=1e-7)
    n = step + 1
    np.testing.assert_allclose(paper(step), 2.0 * 64 ** -0.5 * min(n ** -0.5, n * warmup ** -1.5),
                               rtol=1e-5)


def test_weight_decay_on_matrices_only():
  """AdamW decays kernels and embedding tables, never biases or norm scales."""
  import transformer as tf
  from flax import linen as nn
  model = tf.Transformer(tf.tiny(vocab_size=20, num_layers=1, d_model=16, mlp_dim=32))
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ones, ones))['params']
  params = jax.tree.map(jnp.ones_like, params)   # (biases start at 0: decay would not show)
  tx = optimizer_lib.make_optimizer(optim_config(schedule='constant', grad_clip_norm=0.0),
                                    optax.constant_schedule(1.0))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  decayed = jax.tree_util.tree_flatten_with_path(updates)[0]
  for path, update in decayed:
    name = '/'.join(k.key for k in path)
    moved = float(jnp.abs(update).max()) > 0
    assert moved == (name.endswith('kernel') or name.endswith('embedding')), name
  assert any(name.endswith('bias') and update.ndim == 2 for name, update in
             (('/'.join(k.key for k in path), u) for path, u in decayed))   # attention biases


def test_gradient_clipping_scales_a_large_gradient_to_the_norm():
  """With clip 1.0, Adam sees a gradient of norm 10 scaled to norm 1 (and one of norm 0.5
  unchanged). Adam is invariant to one constant scale of every gradient, so the test
  takes two steps whose gradients have different norms: only the true clipping gives
  the same updates as Adam on the hand-clipped gradients."""
  config = optim_config(schedule='constant', weight_decay=0.0, grad_clip_norm=1.0)
  clipped = optimizer_lib.make_optimizer(config, optax.constant_schedule(0.1))
  plain = optimizer_lib.make_optimizer(optim_config(schedule='constant', weight_decay=0.0,
                                                    grad_clip_norm=0.0),
                                       optax.constant_schedule(0.1))
  params = {'w': jnp.ones((3, 4)), 'b': jnp.zeros(4)}
  first = {'w': jnp.full((3, 4), 2.0), 'b': jnp.full(4, 3.0)}
  first_norm = float(optax.global_norm(first))
  second = jax.tree.map(lambda g: g * 0.5 / first_norm, {'w': jnp.arange(12.0).reshape(3, 4),
                                                          'b': jnp.ones(4)})
  second = jax.tree.map(lambda g: g / float(optax.global_norm(second)) * 0.5, second)
  by_hand = [jax.tree.map(lambda g: g / first_norm, first), second]   # norms 1.0 and 0.5

  def run(tx, grads_list):
    state, out = tx.init(params), []
    for grads in grads_list:
      updates, state = tx.update(grads, state, params)
      out.append(updates)
    return out

  for got, want in zip(run(clipped, [first, second]), run(plain, by_hand)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  unclipped = run(plain, [first, second])[1]
  assert not np.allclose(unclipped['w'], run(clipped, [first, second])[1]['w'])
