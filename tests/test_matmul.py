"""transformer.matmul: the projection matmul with a pre-transposed weight gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import transformer as tf
from transformer import matmul

# (lhs shape, rhs shape, dimension numbers): nn.Dense narrow -> wide (x^T is transposed),
# wide -> narrow (dy^T is), DenseGeneral into heads, and out of heads.
PROJECTIONS = [
    ((2, 5, 8), (8, 16), (((2,), (0,)), ((), ()))),
    ((2, 5, 16), (16, 8), (((2,), (0,)), ((), ()))),
    ((2, 5, 8), (8, 4, 3), (((2,), (0,)), ((), ()))),
    ((2, 5, 4, 3), (4, 3, 8), (((2, 3), (0, 1)), ((), ()))),
]


def _value_and_grads(dot_general, lhs, rhs, dims):
  probe = jax.random.normal(jax.random.PRNGKey(2), lax.dot_general(lhs, rhs, dims).shape)
  loss = lambda a, b: jnp.sum(jnp.sin(dot_general(a, b, dims)) * probe)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(lhs, rhs)


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims', PROJECTIONS)
def test_projection_value_and_gradients_match_lax(lhs_shape, rhs_shape, dims):
  lhs = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
  rhs = jax.random.normal(jax.random.PRNGKey(1), rhs_shape)
  ours = _value_and_grads(matmul.dot_general, lhs, rhs, dims)
  reference = _value_and_grads(lax.dot_general, lhs, rhs, dims)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_contractions_are_plain_dot_general():
  # Embed.attend: x [B, T, D] against the embedding table [V, D] (contracts rhs dim 1).
  x, table = jnp.ones((2, 3, 4)), jnp.arange(20.0).reshape(5, 4)
  dims = (((2,), (1,)), ((), ()))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda t: matmul.dot_general(x, t, dims).sum()))(table))
  assert 'optimization_barrier' not in jaxpr
  np.testing.assert_array_equal(matmul.dot_general(x, table, dims), lax.dot_general(x, table, dims))


def test_bfloat16_gradients_keep_their_dtypes():
  lhs, rhs = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 16), jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  grads = jax.grad(lambda a, b: matmul.dot_general(a, b, dims).astype(jnp.float32).sum(),
                   argnums=(0, 1))(lhs, rhs)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
  np.testing.assert_array_equal(grads[0].astype(jnp.float32), 16.0)


def test_cpu_default_and_explicit_switch():
  assert matmul.projection_dot_general(None) is (
      matmul.dot_general if jax.default_backend() == 'cpu' else None)
  assert matmul.projection_dot_general(True) is matmul.dot_general
  assert matmul.projection_dot_general(False) is None


def _lm_loss_and_grads(cpu_matmul):
  cfg = tf.tiny(vocab_size=30).replace(pre_norm=True, activation='gelu', cpu_matmul=cpu_matmul)
  model = tf.DecoderLM(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 1, 30)
  params = model.init(jax.random.PRNGKey(1), tokens)

  def loss(p):
    logits = model.apply(p, tokens)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))

  return loss, params


def test_models_use_it_when_asked_with_the_same_gradients():
  results = {}
  for cpu_matmul in (True, False):
    loss, params = _lm_loss_and_grads(cpu_matmul)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert ('optimization_barrier' in jaxpr) == cpu_matmul
    results[cpu_matmul] = jax.jit(jax.value_and_grad(loss))(params)
  for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
