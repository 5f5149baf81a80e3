"""The three models as NNX modules (transformer.nnx): initialised by `to_nnx` itself, with
the linen models' logical axis names, trained by `nnx.Optimizer` to the same losses as
the linen path, and placed on a mesh by our rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax import traverse_util

import transformer as tfm
from transformer import nnx as tnnx

from tests.helpers import run_python

RNG = jax.random.PRNGKey(0)
CFG = tfm.tiny(vocab_size=40, d_model=32, num_heads=4, mlp_dim=64, num_layers=1, max_len=16)
STEPS = 4


def family(kind):
  """(model, inputs, loss of the model's outputs) on a fixed batch."""
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 9), 1, CFG.vocab_size)
  cross_entropy = lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(
      logits, labels).mean()
  if kind == 'encdec':
    model, inputs = tfm.Transformer(CFG), (tokens[:, :6], tokens[:, :-1])
    loss = lambda out: cross_entropy(out, tokens[:, 1:])
  elif kind == 'lm':
    model, inputs = tfm.DecoderLM(CFG), (tokens[:, :-1],)
    loss = lambda out: cross_entropy(out, tokens[:, 1:])
  else:
    model, inputs = tfm.EncoderModel(CFG.replace(num_classes=3)), (tokens,)
    loss = lambda out: (cross_entropy(out['mlm_logits'], tokens)
                        + cross_entropy(out['class_logits'], tokens[:, 0] % 3))
  return model, inputs, loss


def linen_losses(model, inputs, loss, params):
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    value, grads = jax.value_and_grad(lambda p: loss(model.apply({'params': p}, *inputs)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state, losses = tx.init(params), []
  for _ in range(STEPS):
    params, opt_state, value = step(params, opt_state)
    losses.append(float(value))
  return losses


def nnx_losses(module, inputs, loss):
  optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(module, optimizer):
    value, grads = nnx.value_and_grad(lambda m: loss(m(*inputs)))(module)
    optimizer.update(module, grads)
    return value

  return [float(step(module, optimizer)) for _ in range(STEPS)]


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['encdec', 'lm', 'encoder'])
def test_nnx_training_gives_the_linen_losses(kind):
  model, inputs, loss = family(kind)
  params = nn.meta.unbox(jax.jit(model.init)(RNG, *inputs))['params']
  expected = linen_losses(model, inputs, loss, params)
  got = nnx_losses(tnnx.to_nnx(model, {'params': params}), inputs, loss)
  assert expected[-1] < expected[0] - 0.1       # it learns
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def flat_specs(tree):
  return {k: tuple(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('kind', ['encdec', 'lm', 'encoder'])
def test_nnx_modules_initialise_themselves_with_the_logical_axis_names(kind):
  model, inputs, _ = family(kind)
  module = tnnx.to_nnx(model, rngs=nnx.Rngs(3))   # no forward pass written by the user
  specs = nnx.get_partition_spec(nnx.state(module, nnx.Param)).to_pure_dict()
  linen_specs = nn.get_partition_spec(jax.eval_shape(model.init, RNG, *inputs))['params']
  assert flat_specs(specs) == flat_specs(linen_specs)
  assert ('embed', 'heads', 'kv') in flat_specs(specs).values()
  shapes = jax.eval_shape(lambda v: model.apply(v, *inputs),
                          jax.eval_shape(model.init, RNG, *inputs))
  out = nnx.jit(lambda m, args: m(*args))(module, inputs)
  assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, shapes)


def test_nnx_module_holds_given_variables_and_exposes_methods():
  model, inputs, _ = family('encdec')
  variables = jax.jit(model.init)(RNG, *inputs)                 # boxed: names and values
  module = tnnx.to_nnx(model, variables)
  np.testing.assert_array_equal(module(*inputs), model.apply(variables, *inputs))
  np.testing.assert_array_equal(module.encode(inputs[0]),
                                model.apply(variables, inputs[0], method=model.encode))


@pytest.mark.slow
def test_shard_places_nnx_variables_by_our_rules():
  code = '''
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
import transformer as tfm
from transformer import nnx as tnnx, sharding
model = tfm.DecoderLM(tfm.tiny(vocab_size=40, d_model=32, num_heads=4, mlp_dim=64))
module = tnnx.to_nnx(model, rngs=nnx.Rngs(0))
optimizer = nnx.Optimizer(module, optax.adam(1e-3), wrt=nnx.Param)
tokens = jnp.arange(1, 9)[None]
before = np.asarray(module(tokens))
mesh = sharding.make_mesh({'data': 1, 'fsdp': 2, 'tensor': 2})
tnnx.shard(module, mesh)
tnnx.shard(optimizer, mesh)
params = nnx.state(module, nnx.Param)
query = params['decoder']['layer_0']['self_attention']['query']['kernel'][...]
table = params['embedding']['embedding'][...]
moment = nnx.state(optimizer)['opt_state'][0]['mu']['embedding']['embedding'][...]
assert moment.sharding.spec == table.sharding.spec
print(tuple(query.sharding.spec), tuple(table.sharding.spec), len(query.sharding.device_set))
np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, t: m(t))(module, tokens)), before,
                           rtol=1e-5, atol=1e-5)
'''
  out = run_python(code, devices=4).strip().splitlines()[-1]
  assert out == "('fsdp', 'tensor', None) ('tensor', 'fsdp') 4"
