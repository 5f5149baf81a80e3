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


@pytest.mark.parametrize('num_kv_heads', [4, 2])
def test_beam_slot_attention_reads_each_beams_history_from_its_slots(num_kv_heads):
  """Equal to attention over the keys and values gathered from the rows the slots name
  (the float64 reference), for grouped heads, several queries and masked positions."""
  b, w, t, s, n, h = 2, 3, 2, 6, 4, 8
  query, key, value = random_qkv(5, b=b * w, t=t, s=s, n=n, k=num_kv_heads, h=h)
  slots = jax.random.randint(jax.random.PRNGKey(6), (b, w, s), 0, w)
  mask = jax.random.bernoulli(jax.random.PRNGKey(7), 0.7, (b * w, 1, t, s))
  mask = mask.at[0, 0, 0].set(False)  # a fully masked query: zeros
  rows = (jnp.arange(b)[:, None, None] * w + slots).reshape(b * w, s)  # [B*W, S]
  gathered_key = key[rows, jnp.arange(s)]     # [B*W, S, K, H]
  gathered_value = value[rows, jnp.arange(s)]
  cache = attn.to_cache_layout({'key': key, 'value': value})
  out = attn.beam_slot_attention(query, cache['key'], cache['value'], slots, mask)
  expected = reference_attention(query, gathered_key, gathered_value, mask)
  assert relative_error(out, expected) < 1e-5
  assert not np.asarray(out)[0, 0].any()
  with pytest.raises(ValueError, match='beam_slots'):
    attn.beam_slot_attention(query, cache['key'], cache['value'], slots[:, :2], mask)


@pytest.mark.parametrize('num_kv_heads', [4, 2])
def test_shared_memory_attention_equals_attention_to_the_repeated_memory(num_kv_heads):
  """Beams of one source reading its memory once: the float64 reference with the memory
  repeated for every beam, padded memory positions masked (one row fully)."""
  b, w, t, s, n, h = 2, 3, 2, 6, 4, 8
  query, _, _ = random_qkv(9, b=b * w, t=t, s=s, n=n, k=num_kv_heads, h=h)
  _, key, value = random_qkv(10, b=b, t=t, s=s, n=n, k=num_kv_heads, h=h)
  mask = jnp.array([[True] * 4 + [False] * 2, [False] * 6])[:, None, None, :]   # [B, 1, 1, S]
  memory = attn.to_cache_layout({'key': key, 'value': value})
  out = attn.shared_memory_attention(query, memory, mask)
  expected = reference_attention(query, np.repeat(key, w, 0), np.repeat(value, w, 0),
                                 np.repeat(mask, w, 0))
  assert relative_error(out, expected) < 1e-5
  assert not np.asarray(out)[w:].any()   # the second source has no real token
  with pytest.raises(ValueError, match='groups'):
    attn.shared_memory_attention(query[:5], memory, mask)


def test_cache_layout_round_trips():
  _, key, value = random_qkv(8)
  back = attn.from_cache_layout(attn.to_cache_layout({'key': key, 'value': value}))
  np.testing.assert_array_equal(back['key'], key)
  np.testing.assert_array_equal(back['value'], value)


# ---------------------------------------------------------------------------------------
# The fused path (jax.nn.dot_product_attention) with our masks, through the models.
# ---------------------------------------------------------------------------------------

def _padded(tokens, lengths):
  """Right padding: row b keeps its first lengths[b] tokens."""
  return jnp.where(jnp.arange(tokens.shape[1]) < jnp.asarray(lengths)[:, None], tokens, 0)


def _model_and_inputs(kind):
  import transformer as tfm
  cfg = tfm.tiny(vocab_size=30, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                 max_len=16, num_classes=3)
  src = jax.random.randint(jax.random.PRNGKey(3), (3, 9), 1, 30)
  tgt = jax.random.randint(jax.random.PRNGKey(4), (3, 7), 1, 30)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1], [1, 1, 2, 2, 3, 3, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1, 0]])
  kwargs = {}
  if kind == 'lm causal':                       # causal only: no padding
    model, args = tfm.DecoderLM(cfg), (tgt,)
  elif kind == 'lm causal + padding':
    model, args = tfm.DecoderLM(cfg), (_padded(tgt, [7, 4, 1]),)
  elif kind == 'lm packed':                     # segment ids: a dense mask
    model, args = tfm.DecoderLM(cfg), (tgt * (segments > 0),)
    kwargs = dict(segment_ids=segments, positions=positions)
  elif kind == 'encoder padding':
    model, args = tfm.EncoderModel(cfg), (_padded(src, [9, 5, 2]),)
  elif kind == 'encoder-decoder padding':       # padding on both sides, cross-attention
    model, args = tfm.Transformer(cfg), (_padded(src, [9, 5, 2]), _padded(tgt, [7, 3, 6]))
  else:
    raise ValueError(kind)
  return cfg, model, args, kwargs


@pytest.mark.parametrize('kind', ['lm causal', 'lm causal + padding', 'lm packed',
                                  'encoder padding', 'encoder-decoder padding'])
def test_fused_path_gives_the_einsum_paths_outputs_and_gradients(kind):
  """attention_impl='xla' (jax.nn.dot_product_attention on CPU) against the einsum path:
  structured masks go as is_causal / sequence lengths, packed rows as a dense mask."""
  cfg, model, args, kwargs = _model_and_inputs(kind)
  fused = type(model)(model.config.replace(attention_impl='xla'))
  params = model.init(jax.random.PRNGKey(0), *args, **kwargs)['params']

  def loss(m, p):
    out = m.apply({'params': p}, *args, **kwargs)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out)), out

  (value, out), grads = jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(params)
  (fused_value, fused_out), fused_grads = jax.jit(
      jax.value_and_grad(lambda p: loss(fused, p), has_aux=True))(params)
  for a, b in zip(jax.tree.leaves(fused_out), jax.tree.leaves(out)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fused_value, value, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(grads)):
    assert float(jnp.abs(a - b).max()) <= 1e-5 * scale


def test_structured_masks_reach_jax_as_causal_and_lengths(monkeypatch):
  """The fused call gets is_causal and sequence lengths (no dense mask) when the mask is
  causal and/or end-of-row padding, and a dense mask for packed rows."""
  calls = []
  real = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append({k: kwargs.get(k) is not None and kwargs.get(k) is not False
                  for k in ('mask', 'is_causal', 'query_seq_lengths', 'key_value_seq_lengths')})
    return real(*args, **kwargs)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', spy)
  for kind, expected in [
      ('lm causal + padding', {'mask': False, 'is_causal': True, 'query_seq_lengths': False,
                               'key_value_seq_lengths': True}),
      ('encoder padding', {'mask': False, 'is_causal': False, 'query_seq_lengths': True,
                           'key_value_seq_lengths': True}),
      ('lm packed', {'mask': True, 'is_causal': False, 'query_seq_lengths': False,
                     'key_value_seq_lengths': False})]:
    calls.clear()
    cfg, model, args, kwargs = _model_and_inputs(kind)
    fused = type(model)(cfg.replace(attention_impl='xla'))
    fused.init(jax.random.PRNGKey(0), *args, **kwargs)
    assert calls and all(c == expected for c in calls), (kind, calls)


def test_tracing_for_a_gpu_chooses_cudnn_on_any_host(monkeypatch):
  """'auto' chooses while tracing: inside tracing_for('gpu') (a GPU program exported from
  this CPU host) a structured mask goes to cuDNN and a packed one stays on the einsum
  path; outside it, the default backend chooses again."""
  chosen = []

  def library(query, key, value, *, implementation, **kwargs):
    chosen.append(implementation)
    return query
  monkeypatch.setattr(jax.nn, 'dot_product_attention', library)
  q = jnp.ones((2, 4, 2, 8))
  mask = attn.padding_attention_mask(jnp.ones((2, 4), bool), jnp.ones((2, 4), bool),
                                     causal=True)
  packed = mask & attn.make_segment_mask(jnp.ones((2, 4), int), jnp.ones((2, 4), int))
  with attn.tracing_for('gpu'):
    assert attn.target_backend() == 'gpu'
    attn.dot_product_attention(q, q, q, mask, implementation='auto')
    attn.dot_product_attention(q, q, q, packed, implementation='auto')
  assert chosen == ['cudnn']
  assert attn.target_backend() == jax.default_backend()
  attn.dot_product_attention(q, q, q, mask, implementation='auto')
  assert chosen == ['cudnn'] * (2 if jax.default_backend() == 'gpu' else 1)


def test_cudnn_refuses_a_dense_mask_with_a_clear_error():
  q = k = v = jnp.ones((1, 4, 2, 8))
  dense = attn.AttentionMask(jnp.ones((1, 1, 4, 4), bool))   # e.g. packed rows
  with pytest.raises(ValueError, match="takes causal and end-of-row padding.*'auto'"):
    attn.dot_product_attention(q, k, v, dense, implementation='cudnn')


def test_auto_uses_the_einsum_path_off_gpus():
  q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 8))
  mask = attn.padding_attention_mask(jnp.ones((2, 5), bool), jnp.ones((2, 5), bool),
                                     causal=True)
  np.testing.assert_array_equal(attn.dot_product_attention(q, q, q, mask, implementation='auto'),
                                attn.dot_product_attention(q, q, q, mask))

