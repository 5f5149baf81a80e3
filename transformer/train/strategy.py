"""How the pure steps run on the devices: `jax.jit` over a mesh, or `jax.pmap`.

Both strategies have one interface, so the loop and the evaluator never ask which one
they hold:

    strategy = make_strategy(config.parallelism, mesh, state_sharding, train_fn, eval_fn,
                             steps_per_call)
    state = strategy.put_state(state)                 # the devices' layout of a host state
    state, metrics = strategy.train(state, strategy.put_batch(batch))
    sums = strategy.eval(state.params, strategy.put_batch(eval_batch))
    host = strategy.one_copy(state)                   # one logical copy (what is saved)

`jit` (the default) shards the state by its logical axis names over the mesh
('data', 'fsdp', 'tensor') and the batch over data x fsdp; XLA inserts the collectives.
`pmap` is plain data parallelism over the local devices: each holds a whole copy of the
state and a slice of the batch, and the step sums gradients with `lax.psum` itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from transformer import sharding
from transformer.train.step import scan_steps


class JitStrategy:
  """jit with explicit shardings; the state's buffers are donated to the update.

  `steps_per_call > 1`: the train step takes batches stacked on a new leading axis (see
  `step.scan_steps`), that axis unsharded.
  """

  def __init__(self, mesh: Mesh, state_sharding: Any, train_fn: Callable, eval_fn: Callable,
               steps_per_call: int = 1):
    self.mesh = mesh
    batch = sharding.batch_sharding(mesh)
    train_batch = batch
    # Traced over the mesh: the model pins its activations' rows to the batch axes.
    train_fn, eval_fn = sharding.within_mesh(train_fn, mesh), sharding.within_mesh(eval_fn, mesh)
    if steps_per_call > 1:
      train_fn = scan_steps(train_fn)
      train_batch = NamedSharding(mesh, P(None, *batch.spec))
    replicated = sharding.replicated(mesh)
    self.train = jax.jit(train_fn, in_shardings=(state_sharding, train_batch),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    self.eval = jax.jit(eval_fn, in_shardings=(state_sharding.params, batch),
                        out_shardings=replicated)

  # Whether `train.lower(abstract state, abstract batch)` works (the loop compiles ahead).
  lowers_from_shapes = True

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def put_state(self, state: Any) -> Any:
    return state   # built or restored with the state's shardings already

  def abstract_state(self, abstract: Any) -> Any:
    return abstract

  def one_copy(self, tree: Any) -> Any:
    return tree

  def put_batch(self, batch, stacked: bool = False):
    return sharding.global_batch(batch, self.mesh, stacked)


class PmapStrategy:
  """The same steps under pmap: plain data parallelism, gradients summed by `lax.psum`."""

  def __init__(self, mesh: Mesh, state_sharding: Any, train_fn: Callable, eval_fn: Callable,
               steps_per_call: int = 1):
    del mesh, state_sharding   # pmap lays out whole copies over the local devices
    self.mesh = sharding.pmap_mesh()
    axis = sharding.PMAP_AXIS
    train_fn = functools.partial(train_fn, axis_name=axis)
    if steps_per_call > 1:
      train_fn = scan_steps(train_fn)
    self.train = jax.pmap(train_fn, axis_name=axis, donate_argnums=0)
    self.eval = jax.pmap(functools.partial(eval_fn, axis_name=axis), axis_name=axis)
    # Across processes, pmap's lower() fails on ShapeDtypeStructs (JAX 0.10: an IndexError
    # in host_local_array_to_global_array); its first real call compiles instead.
    self.lowers_from_shapes = jax.process_count() == 1

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def put_state(self, state: Any) -> Any:
    return sharding.replicate_for_pmap(jax.device_get(state), self.mesh)

  def abstract_state(self, abstract: Any) -> Any:
    return sharding.abstract_replicate_for_pmap(abstract, self.mesh)

  def one_copy(self, tree: Any) -> Any:
    """The first device's copy: every device holds the same state and metrics."""
    return sharding.unreplicate(tree)

  def put_batch(self, batch, stacked: bool = False):
    return sharding.split_for_pmap(batch, self.mesh, stacked)


STRATEGIES = {'jit': JitStrategy, 'pmap': PmapStrategy}


def make_strategy(name: str, mesh: Mesh, state_sharding: Any, train_fn: Callable,
                  eval_fn: Callable, steps_per_call: int = 1):
  """The strategy `config.parallelism` names (a name `experiment.check_config` checked)."""
  return STRATEGIES[name](mesh, state_sharding, train_fn, eval_fn, steps_per_call)

def abstract(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays carrying `shardings` (a matching tree of them;
  default: each array's own): what `jit(...).lower`, Orbax's restore and `device_put` take
  to place a state without holding one."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
