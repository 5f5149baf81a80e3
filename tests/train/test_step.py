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
  run = lambda n: step_lib.train_step(state, batch, model=model, task=get_task('lm'),
                                      dropout_key=jax.random.PRNGKey(0), grad_accum_steps=n)
  one, m1 = run(1)
  four, m4 = run(4)
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='micro-batches'):
    run(3)
