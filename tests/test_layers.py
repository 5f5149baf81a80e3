"""Each sub-layer against the float64 NumPy reference (tests/reference.py), option by option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import transformer as tf
from tests import reference
from transformer import layers
from transformer.attention import MultiHeadAttention

RNG = jax.random.PRNGKey(0)


def relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.abs(actual - expected).max() / np.abs(expected).max()


def init(module, *args, **kwargs):
  """Parameters with every value random (biases and norm scales too, so that a missing
  bias or a scale ignored shows up), unboxed."""
  params = nn.meta.unbox(module.init(RNG, *args, **kwargs))['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) * 0.3 + (x.ndim == 1) * 0.5
                                      for k, x in zip(keys, leaves)])


def inputs(shape, seed=2):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize('activation', ['relu', 'gelu', 'gelu_exact', 'silu', 'swiglu'])
@pytest.mark.parametrize('use_bias', [True, False])
def test_feed_forward(activation, use_bias):
  cfg = tf.tiny(activation=activation, use_bias=use_bias, d_model=16, mlp_dim=24)
  module = layers.make_feed_forward(cfg)
  x = inputs((2, 5, 16))
  params = init(module, x)
  assert ('bias' in params['wi']) == use_bias and ('gate' in params) == (activation == 'swiglu')
  expected = reference.feed_forward(np.asarray(x, np.float64), reference.f64(params), cfg)
  assert relative_error(module.apply({'params': params}, x), expected) < 1e-5


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm'])
@pytest.mark.parametrize('epsilon', [1e-6, 0.5])
def test_norms(norm, epsilon):
  cfg = tf.tiny(norm=norm, d_model=16, norm_epsilon=epsilon)
  module = layers.make_norm(cfg, 'norm')
  x = inputs((2, 5, 16)) * 3 + 1
  params = init(module, x)
  expected = reference.norm(np.asarray(x, np.float64), reference.f64(params), cfg)
  assert relative_error(module.apply({'params': params}, x), expected) < 1e-5


@pytest.mark.parametrize('num_heads,num_kv_heads,head_dim', [
    (4, None, 4),     # the paper's multi-head attention, H = D / N
    (4, 2, 4),        # grouped-query
    (4, 1, 4),        # multi-query
    (2, None, 12),    # a head width other than D / N
])
@pytest.mark.parametrize('rope', [False, True])
@pytest.mark.parametrize('use_bias', [True, False])
def test_attention(num_heads, num_kv_heads, head_dim, rope, use_bias):
  cfg = tf.tiny(d_model=16, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                use_bias=use_bias)
  module = MultiHeadAttention(num_heads=num_heads, head_dim=head_dim, num_kv_heads=num_kv_heads,
                              use_bias=use_bias, rope=rope)
  x = inputs((2, 6, 16))
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  causal = tf.make_causal_mask(6)
  params = init(module, x, mask=causal, positions_q=positions)
  out = module.apply({'params': params}, x, mask=causal, positions_q=positions)
  p = reference.f64(params)
  expected = np.stack([reference.attention(row, row, p, cfg, causal=True, rope=rope)
                       for row in np.asarray(x, np.float64)])
  assert relative_error(out, expected) < 1e-5


def test_cross_attention():
  cfg = tf.tiny(d_model=16, num_heads=4)
  module = MultiHeadAttention(num_heads=4, head_dim=4)
  x, memory = inputs((2, 5, 16)), inputs((2, 7, 16), seed=3)
  params = init(module, x, memory)
  p = reference.f64(params)
  expected = np.stack([reference.attention(q, kv, p, cfg, causal=False, rope=False)
                       for q, kv in zip(np.asarray(x, np.float64), np.asarray(memory, np.float64))])
  assert relative_error(module.apply({'params': params}, x, memory), expected) < 1e-5


@pytest.mark.parametrize('pre_norm', [False, True])
def test_encoder_layer_residual_blocks(pre_norm):
  """Post-LN: x = Norm(x + Sublayer(x)); pre-LN: x = x + Sublayer(Norm(x))."""
  cfg = tf.tiny(d_model=16, num_heads=4, mlp_dim=24, pre_norm=pre_norm)
  module = layers.EncoderLayer(cfg)
  x = inputs((2, 6, 16))
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  params = init(module, x, None, positions, True)
  p = reference.f64(params)

  def expected_row(h):
    h = reference.residual(h, lambda y: reference.attention(y, y, p['self_attention'], cfg,
                                                            causal=False, rope=False),
                           p['self_attention_block']['norm'], cfg)
    return reference.residual(h, lambda y: reference.feed_forward(y, p['mlp'], cfg),
                              p['mlp_block']['norm'], cfg)
  expected = np.stack([expected_row(row) for row in np.asarray(x, np.float64)])
  assert relative_error(module.apply({'params': params}, x, None, positions, True),
                        expected) < 1e-5
