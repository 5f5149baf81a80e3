"""The tiny encoder-decoder learns a copy task with optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import transformer as tf


def test_tiny_encoder_decoder_learns_to_copy():
  cfg = tf.tiny(vocab_size=12, d_model=64, mlp_dim=128, num_layers=2)
  model = tf.Transformer(cfg)
  rng = np.random.default_rng(0)
  src = jnp.asarray(rng.integers(3, 12, size=(32, 8)), jnp.int32)
  decoder_inputs = jnp.concatenate([jnp.ones((32, 1), jnp.int32), src[:, :-1]], axis=1)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), src, decoder_inputs))
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply(p, src, decoder_inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, src).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(300):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
    if loss < 0.05:
      break
  assert losses[-1] < 0.05, losses[::25]
