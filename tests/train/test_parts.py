"""Loss, schedules, optimizer, gradient accumulation and sharding helpers, in-process."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

import transformer as tf
from transformer import sharding
from transformer.train import loss as loss_lib
from transformer.train import optimizer as optimizer_lib
from transformer.train import step as step_lib


def test_cross_entropy_matches_optax_and_respects_weights():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11))
  targets = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
  sums = loss_lib.cross_entropy_sums(logits, targets, weights)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(sums['loss_sum'], (expected * weights).sum(), rtol=1e-6)
  assert sums['weight_sum'] == 8


def test_label_smoothing_is_shifted_cross_entropy_with_smoothed_targets():
  logits = jax.random.normal(jax.random.PRNGKey(2), (3, 7))
  targets = jnp.array([0, 3, 6])
  weights = jnp.ones(3)
  eps = 0.1
  sums = loss_lib.cross_entropy_sums(logits, targets, weights, label_smoothing=eps)
  q = optax.smooth_labels(jax.nn.one_hot(targets, 7), eps)
  xent = optax.softmax_cross_entropy(logits, q)
  entropy = -(q * jnp.log(q)).sum(-1)
  np.testing.assert_allclose(sums['loss_sum'], (xent - entropy).sum(), rtol=1e-5)
  # A model that outputs the smoothed distribution scores 0.
  perfect = jnp.log(q)
  np.testing.assert_allclose(
      loss_lib.cross_entropy_sums(perfect, targets, weights, eps)['loss_sum'], 0.0, atol=1e-5)


def test_exact_match_counts_only_fully_right_rows():
  targets = jnp.array([[3, 4, 0], [3, 4, 5], [0, 0, 0]])
  weights = (targets != 0).astype(jnp.float32)
  logits = jax.nn.one_hot(jnp.array([[3, 4, 9], [3, 1, 5], [0, 0, 0]]), 10)
  out = loss_lib.sequence_exact_matches(logits, targets, weights)
  assert float(out['exact_sum']) == 1 and float(out['sequence_sum']) == 2


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


def test_weight_decay_skips_vectors_and_clipping_bounds_the_update():
  tx = optimizer_lib.make_optimizer(optim_config(schedule='constant'),
                                    optax.constant_schedule(1.0))
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates['w']).sum()) > 0     # decayed
  assert float(jnp.abs(updates['b']).sum()) == 0    # not decayed


def tiny_lm_setup(grad_accum_steps=1):
  cfg = tf.tiny(vocab_size=20, d_model=32, mlp_dim=64, num_layers=1, dropout_rate=0.0)
  model = tf.DecoderLM(cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 20, (8, 9))
  weights = (rng.random((8, 8)) > 0.3).astype(np.float32)  # uneven token counts per row
  batch = {'inputs': jnp.asarray(tokens[:, :-1], jnp.int32),
           'targets': jnp.asarray(tokens[:, 1:], jnp.int32), 'weights': jnp.asarray(weights)}
  tx = optax.sgd(0.1)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch['inputs']))['params']
  state = step_lib.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return model, state, batch


def test_gradient_accumulation_equals_one_big_batch():
  model, state, batch = tiny_lm_setup()
  run = lambda n: step_lib.train_step(state, batch, model=model, task='lm',
                                      dropout_key=jax.random.PRNGKey(0), grad_accum_steps=n)
  one, m1 = run(1)
  four, m4 = run(4)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='micro-batches'):
    run(3)


def test_make_mesh_shapes():
  mesh = sharding.make_mesh({'data': -1})
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert mesh.devices.size == jax.device_count()
  assert sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}).devices.size == 1
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2})
  with pytest.raises(ValueError, match='at most one'):
    sharding.make_mesh({'data': -1, 'fsdp': -1})
