import jax
import jax.numpy as jnp
import math
import numpy as np

from transformer import positional


def test_sinusoidal_encoding_is_the_papers_formula_element_by_element():
  length, d_model = 50, 16
  table = np.asarray(positional.sinusoidal_encoding(length, d_model))
  assert table.shape == (length, d_model) and table.dtype == np.float32
  for pos in range(length):
    for i in range(d_model // 2):
      angle = pos / 10000 ** (2 * i / d_model)
      assert abs(table[pos, 2 * i] - math.sin(angle)) < 1e-6
      assert abs(table[pos, 2 * i + 1] - math.cos(angle)) < 1e-6


def test_sinusoidal_encoding_odd_width():
  table = np.asarray(positional.sinusoidal_encoding(4, 5))
  assert table.shape == (4, 5)
  np.testing.assert_allclose(table[3, 4], math.sin(3 / 10000 ** (4 / 5)), atol=1e-6)


def test_split_layout_puts_sines_first_then_cosines():
  """Marian's channel order: the same angles, sin in channel i, cos in d/2 + i."""
  length, d_model = 20, 8
  table = np.asarray(positional.sinusoidal_encoding(length, d_model, layout='split'))
  for pos in range(length):
    for i in range(d_model // 2):
      angle = pos / 10000 ** (2 * i / d_model)
      assert abs(table[pos, i] - math.sin(angle)) < 1e-6
      assert abs(table[pos, d_model // 2 + i] - math.cos(angle)) < 1e-6
  odd = np.asarray(positional.sinusoidal_encoding(4, 5, layout='split'))
  np.testing.assert_allclose(odd[3, :3], np.sin(3 / 10000 ** (np.arange(0, 5, 2) / 5)),
                             atol=1e-6)


def test_rope_preserves_norm_and_depends_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
  rot = lambda x, p: positional.apply_rope(x, jnp.array([[p]]))
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 7)), jnp.linalg.norm(q), rtol=1e-5)
  dot = lambda m, n: float(jnp.sum(rot(q, m) * rot(k, n)))
  assert abs(dot(3, 1) - dot(12, 10)) < 1e-4
  assert abs(dot(3, 1) - dot(3, 2)) > 1e-3
  np.testing.assert_allclose(rot(q, 0), q, rtol=1e-6)


def test_learned_embedding_looks_up_rows():
  module = positional.LearnedPositionalEmbedding(max_len=10, features=4)
  positions = jnp.array([[0, 3, 9]])
  params = module.init(jax.random.PRNGKey(0), positions)
  table = params['params']['embedding'].unbox()
  np.testing.assert_array_equal(module.apply(params, positions)[0], table[jnp.array([0, 3, 9])])
