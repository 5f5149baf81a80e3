"""Label-smoothed cross-entropy sums and exact match."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from transformer import losses as loss_lib


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
