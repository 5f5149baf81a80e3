"""The pure train step: gradient accumulation equals one big batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import transformer as tf
from transformer.tasks import get_task
from transformer.train import step as step_lib


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
  run = lambda n: jax.jit(lambda s, b: step_lib.train_step(
      s, b, model=model, task=get_task('lm'), dropout_key=jax.random.PRNGKey(0),
      grad_accum_steps=n))(state, batch)
  one, m1 = run(1)
  four, m4 = run(4)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='micro-batches'):
    run(3)


def test_bfloat16_compute_keeps_float32_where_it_matters():
  """model.dtype='bfloat16': parameters, optimizer moments, logits, the loss, attention
  weights (softmax) and norm statistics stay float32; the matmuls run in bfloat16."""
  from transformer import layers
  cfg = tf.tiny(vocab_size=20, d_model=32, mlp_dim=64, num_layers=1, dtype='bfloat16')
  model = tf.DecoderLM(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 9), 1, 20)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
           'weights': jnp.ones((4, 8), jnp.float32)}
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch['inputs']))['params']
  state = step_lib.TrainState.create(apply_fn=model.apply, params=params,
                                     tx=optax.adam(1e-3))
  new_state, metrics = jax.jit(lambda s, b: step_lib.train_step(
      s, b, model=model, task=get_task('lm'), dropout_key=jax.random.PRNGKey(0)))(state, batch)
  for leaf in jax.tree.leaves((new_state.params, new_state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert metrics['loss'].dtype == jnp.float32 and np.isfinite(float(metrics['loss']))
  logits, state = model.apply({'params': params}, batch['inputs'], mutable=['intermediates'])
  assert logits.dtype == jnp.float32
  weights = jax.tree.leaves(state['intermediates'])[0]
  assert weights.dtype == jnp.float32
  # A bfloat16 projection really ran: hidden states differ from float32 compute.
  hidden = lambda m: m.apply({'params': params}, batch['inputs'])
  f32 = tf.DecoderLM(cfg.replace(dtype='float32'))
  assert not np.allclose(hidden(model), hidden(f32), rtol=1e-5)
  # Norm statistics in float32: a large offset that bfloat16 statistics would destroy.
  norm = layers.make_norm(cfg, 'norm')
  x = (100.0 + 3 * jax.random.normal(jax.random.PRNGKey(1), (2, 32))).astype(jnp.bfloat16)
  out = np.asarray(norm.apply(norm.init(jax.random.PRNGKey(0), x), x), np.float64)
  xf = np.asarray(x, np.float64)
  expected = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out, expected, atol=0.05)   # bfloat16 output rounding only


def test_nonfinite_gradients_never_reach_the_parameters():
  """A step whose loss or gradient is not finite leaves parameters and optimizer state as
  they were (the step counter advances) and reports finite=0."""
  model, state, batch = tiny_lm_setup()
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, task=get_task('lm'),
                                                  dropout_key=jax.random.PRNGKey(0)))
  good, good_metrics = step(state, batch)
  assert float(good_metrics['finite']) == 1.0
  poisoned = state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan)
                                               if p.ndim == 2 else p, state.params))
  bad, metrics = step(poisoned, batch)
  assert float(metrics['finite']) == 0.0 and int(bad.step) == int(state.step) + 1
  for a, b in zip(jax.tree.leaves((bad.params, bad.opt_state)),
                  jax.tree.leaves((poisoned.params, poisoned.opt_state))):
    np.testing.assert_array_equal(a, b)
