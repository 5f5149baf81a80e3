"""Our three models as Flax NNX modules, through `flax.nnx.bridge`.

    from flax import nnx
    lm = transformer.nnx.to_nnx(tfm.DecoderLM(cfg), rngs=nnx.Rngs(0))   # initialised
    logits = lm(tokens)                                                # [B, T, V]
    optimizer = nnx.Optimizer(lm, optax.adamw(1e-4), wrt=nnx.Param)

    model, variables = transformer.hf.load(folder)                    # or any linen params
    lm = transformer.nnx.to_nnx(model, variables)
    mesh = transformer.sharding.make_mesh({'fsdp': 2, 'tensor': 2})
    transformer.nnx.shard(lm, mesh); transformer.nnx.shard(optimizer, mesh)

`to_nnx` wraps the linen module in `nnx.bridge.ToNNX` and initialises it itself, from token
ids of the right shapes (`transformer.models.example_inputs`), so no dummy forward pass is
written by hand; given linen `variables`, it takes those instead of initialising. The
module is called with the linen module's arguments (`lm(tokens, deterministic=False)`,
`nmt(inputs, decoder_inputs)`), and its methods too (`nmt.encode(inputs)`,
`bert.mlm_logits(inputs)`). Dropout draws from an rng stream named 'dropout':
`rngs=nnx.Rngs(params=0, dropout=1)`.

Parameters keep the logical axis names of the linen model ('vocab', 'embed', 'heads',
'kv', 'mlp'): `nnx.get_partition_spec(nnx.state(lm))` gives them, and `shard` places every
variable of the model (and of its optimizer) on a mesh by `transformer.sharding`'s rules. Variables are created unsharded
(Flax's eager sharding would need a mesh at creation); `shard` then places them.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables
from jax.sharding import Mesh

from transformer import models, sharding


def to_nnx(model: nn.Module, variables: Any = None, *, rngs: nnx.Rngs | None = None
           ) -> nnx.Module:
  """`model` (a `Transformer`, `DecoderLM` or `EncoderModel`) as an initialised NNX module:
  freshly initialised from `rngs` (default `nnx.Rngs(0)`), or holding `variables`
  ({'params': ...}, boxed or not) with the model's logical axis names attached."""
  rngs = nnx.Rngs(0) if rngs is None else rngs
  example = models.example_inputs(model)
  with nnx.use_eager_sharding(False):
    if variables is None:
      # Compiled: linen's init run eagerly takes seconds even for small models.
      return nnx.jit(lambda r: nnx.bridge.lazy_init(nnx.bridge.ToNNX(model, rngs=r),
                                                    *example))(rngs)
    module = nnx.bridge.ToNNX(model, rngs=rngs)
    # The boxes (logical names) of a fresh init, without computing one, filled with ours.
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example)
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    filled = jax.tree.map(lambda box, value: box.replace_boxed(value) if is_box(box) else value,
                          boxed, nn.meta.unbox(dict(variables)), is_leaf=is_box)
    # What ToNNX does with the variables of its own lazy initialisation.
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(filled).items():
      setattr(module, name, nnx.data(value))
  return module


def shard(node: nnx.Module | nnx.Optimizer, mesh: Mesh, rules=sharding.DEFAULT_RULES) -> None:
  """Places the variables of `node` (an NNX model, or its `nnx.Optimizer`, whose moments
  carry the parameters' names) on `mesh` by their logical axis names and `rules`; unnamed
  ones, and dimensions their mesh axes do not divide, are replicated."""
  state = nnx.state(node)
  shardings = sharding.logical_to_mesh(nnx.get_partition_spec(state), mesh, rules)
  placed = jax.tree.map(lambda x, s: jax.device_put(x, sharding.fit_to_shape(s, x.shape)),
                        state, shardings)
  nnx.update(node, placed)
