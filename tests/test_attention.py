"""dot_product_attention against a float64 NumPy rendering of softmax(QK^T/sqrt(d_k))V."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import attention as attn


def reference_attention(q, k, v, mask):
  """The paper's eq. 1 in float64, head by head, with GQA by repeating key/value heads."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, n, h = q.shape
  groups = n // k.shape[2]
  k = np.repeat(k, groups, axis=2)
  v = np.repeat(v, groups, axis=2)
  mask = np.broadcast_to(np.asarray(mask), (b, n, t, k.shape[1]))
  out = np.zeros((b, t, n, h))
  for bi in range(b):
    for ni in range(n):
      scores = q[bi, :, ni] @ k[bi, :, ni].T / np.sqrt(h)
      for ti in range(t):
        allowed = mask[bi, ni, ti]
        if not allowed.any():
          continue  # fully masked: zeros
        s = np.where(allowed, scores[ti], -np.inf)
        w = np.exp(s - s.max())
        w /= w.sum()
        out[bi, ti, ni] = w @ v[bi, :, ni]
  return out


def random_qkv(seed, b=2, t=5, s=7, n=4, k=4, h=8, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (b, t, n, h), dtype), jax.random.normal(kk, (b, s, k, h), dtype),
          jax.random.normal(kv, (b, s, k, h), dtype))


def relative_error(actual, expected):
  return np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)


def padding_mask():
  query_tokens = jnp.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
  key_tokens = jnp.array([[1, 2, 3, 4, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]])
  return attn.make_padding_mask(query_tokens, key_tokens)


def segment_mask():
  q = jnp.array([[1, 1, 2, 2, 2], [1, 2, 3, 3, 0]])
  kv = jnp.array([[1, 1, 1, 2, 2, 2, 0], [1, 2, 2, 3, 3, 0, 0]])
  return attn.make_segment_mask(q, kv)


@pytest.mark.parametrize('num_kv_heads', [4, 2, 1])
@pytest.mark.parametrize('mask_name', ['none', 'causal', 'padding', 'segment', 'combined'])
def test_matches_float64_reference(num_kv_heads, mask_name):
  q, k, v = random_qkv(num_kv_heads, k=num_kv_heads)
  masks = {
      'none': jnp.ones((1, 1, 1, 1), bool),
      'causal': attn.make_causal_mask(5, 7, offset=2),
      'padding': padding_mask(),
      'segment': segment_mask(),
      'combined': attn.make_causal_mask(5, 7, offset=2) & padding_mask() & segment_mask(),
  }
  mask = masks[mask_name]
  expected = reference_attention(q, k, v, mask)
  actual = attn.dot_product_attention(q, k, v, None if mask_name == 'none' else mask)
  assert actual.shape == q.shape
  assert relative_error(actual, expected) < 1e-5
  jitted = jax.jit(attn.dot_product_attention)(q, k, v, mask)
  assert relative_error(jitted, expected) < 1e-5


def test_fully_masked_rows_are_zero_not_nan():
  q, k, v = random_qkv(0)
  mask = np.ones((2, 1, 5, 7), bool)
  mask[0, :, 2] = False  # query 2 of batch 0 may attend to nothing
  out = attn.dot_product_attention(q, k, v, jnp.asarray(mask))
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(np.asarray(out[0, 2]), 0.0)
  assert np.abs(np.asarray(out[0, 1])).sum() > 0
  # Gradients through a fully masked row are finite too.
  grad = jax.grad(lambda q: attn.dot_product_attention(q, k, v, jnp.asarray(mask)).sum())(q)
  assert np.isfinite(np.asarray(grad)).all()


def test_scaling_by_inverse_sqrt_head_width():
  # One key is all the query sees: the weights must be softmax(q.k / sqrt(H)).
  q = jnp.ones((1, 1, 1, 16))
  k = jnp.stack([jnp.ones(16), jnp.zeros(16)])[None, :, None, :]
  v = jnp.array([[1.0] + [0] * 15, [0.0] * 16])[None, :, None, :]
  _, weights = attn.dot_product_attention(q, k, v, return_weights=True)
  expected = np.exp(16 / 4) / (np.exp(16 / 4) + 1)
  np.testing.assert_allclose(weights[0, 0, 0, 0], expected, rtol=1e-6)


def test_softmax_in_float32_for_bfloat16_inputs():
  q, k, v = random_qkv(1, dtype=jnp.bfloat16)
  mask = attn.make_causal_mask(5, 7, offset=2)
  out, weights = attn.dot_product_attention(q, k, v, mask, return_weights=True)
  assert out.dtype == jnp.bfloat16
  assert weights.dtype == jnp.float32
  expected = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                 v.astype(jnp.float32), mask)
  assert relative_error(out, expected) < 2e-2


def test_masks_combine_with_and():
  causal = attn.make_causal_mask(3)
  assert causal.dtype == jnp.bool_ and causal.shape == (1, 1, 3, 3)
  np.testing.assert_array_equal(causal[0, 0], np.tril(np.ones((3, 3), bool)))
  pad = attn.make_padding_mask(jnp.array([[4, 5, 0]]), jnp.array([[4, 5, 0]]))
  combined = causal & pad
  np.testing.assert_array_equal(combined[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
  seg = attn.make_segment_mask(jnp.array([[1, 1, 2]]), jnp.array([[1, 1, 2]]))
  np.testing.assert_array_equal(seg[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_dropout_is_scaled_and_seeded():
  q, k, v = random_qkv(2)
  rng = jax.random.PRNGKey(3)
  run = lambda r: attn.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=r,
                                             deterministic=False, return_weights=True)[1]
  w1, w2 = run(rng), run(rng)
  np.testing.assert_array_equal(w1, w2)
  dropped = np.asarray(w1) == 0
  assert 0.3 < dropped.mean() < 0.7
  # Kept weights are rescaled by 1 / (1 - rate): row sums average to 1.
  assert abs(float(np.asarray(w1).sum(-1).mean()) - 1.0) < 0.15
  deterministic = attn.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=True)
  np.testing.assert_allclose(deterministic, attn.dot_product_attention(q, k, v), rtol=1e-6)
  with pytest.raises(ValueError, match='dropout_rng'):
    attn.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False)


def test_jax_nn_route_matches_and_keeps_zero_rows():
  q, k, v = random_qkv(4, k=2)
  mask = np.asarray(attn.make_causal_mask(5, 7, offset=2) & padding_mask()).copy()
  mask[1, :, 0] = False
  ours = attn.dot_product_attention(q, k, v, jnp.asarray(mask))
  xla = attn.dot_product_attention(q, k, v, jnp.asarray(mask), implementation='xla')
  np.testing.assert_allclose(xla, ours, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(xla[1, 0]), 0.0)


def test_cudnn_route_errors_clearly_without_a_gpu():
  if jax.default_backend() == 'gpu':
    pytest.skip('a GPU is present: the cuDNN route runs')
  q, k, v = random_qkv(5)
  with pytest.raises(ValueError, match='NVIDIA GPU'):
    attn.dot_product_attention(q, k, v, implementation='cudnn')


def test_bad_shapes_are_rejected():
  q, k, v = random_qkv(6, n=4, k=3)
  with pytest.raises(ValueError, match='do not divide'):
    attn.dot_product_attention(q, k, v)
