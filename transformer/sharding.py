"""Device meshes, logical-axis rules, and the shardings of train states and batches.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, and `layers`
for scanned stacks); a table of
rules maps each logical name onto mesh axes `('data', 'fsdp', 'tensor')`. The batch is split
over data x fsdp. One code path serves one CPU, a GPU box and a multi-host pod:

    mesh = make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
    shardings = state_shardings(abstract_boxed_state, mesh, DEFAULT_RULES)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from transformer.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# Logical name -> mesh axes. `embed` over fsdp shards every matrix's model-width side (ZeRO-3
# style); heads, mlp and vocab over tensor is Megatron's layout. A rule whose mesh axis has
# size 1 costs nothing.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', BATCH_AXES),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('kv', None),
    ('layers', None),   # scanned layers' stacking axis: every device holds every layer
)


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with axes ('data', 'fsdp', 'tensor').

  `shape` gives each axis's size; one axis may be -1 to take the remaining devices. With
  no -1, the mesh takes the first devices it needs.
  Axes are Auto so that linen's sharding annotations apply (`jax.make_mesh`'s default,
  Explicit axes, makes `nn.Embed` raise a ShardingTypeError).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = dict({'data': -1, 'fsdp': 1, 'tensor': 1}, **(shape or {}))
  if -1 not in shape.values() and math.prod(shape.values()) < len(devices):
    devices = devices[:math.prod(shape.values())]  # e.g. data=1: a one-device run
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'unknown mesh axes {sorted(unknown)}; use {MESH_AXES}')
  sizes = [shape[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f'at most one mesh axis may be -1: {shape}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f'{len(devices)} devices do not split into mesh {shape}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                     f'there are {len(devices)}')
  grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_mesh(specs: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def state_shardings(abstract_boxed_state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Shardings for a state whose parameters (and optimizer moments) carry logical names.

  Leaves without names (step counters, scalars) are replicated. The result has the
  structure of the unboxed state.
  """
  specs = nn.get_partition_spec(abstract_boxed_state)
  shardings = logical_to_mesh(specs, mesh, rules)
  shapes = nn.meta.unbox(abstract_boxed_state)
  return jax.tree.map(lambda s, x: fit_to_shape(s, np.shape(x)), shardings, shapes)


def fit_to_shape(sharding: NamedSharding, shape: Sequence[int]) -> NamedSharding:
  """Replicates the dimensions that their mesh axes do not divide (e.g. a vocabulary of
  32001 over 2 tensor shards) instead of failing: correct, if less memory-efficient."""
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  for i, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    if shape[i] % math.prod(sharding.mesh.shape[n] for n in names):
      spec[i] = None
  return NamedSharding(sharding.mesh, P(*spec))


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Rows over data x fsdp, everything else replicated (rows are axis 1 when `stacked`)."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def within_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` traced with `mesh` as the abstract mesh, so that `constrain_rows` inside it pins
  activations (jit's strategy wraps the train and eval steps in it)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  # A bound step is a functools.partial, which has no name for wraps to copy: jit's logs,
  # profiles and compilation cache name the program after the step, not 'wrapped'.
  wrapped.__name__ = wrapped.__qualname__ = getattr(
      fn, '__name__', getattr(getattr(fn, 'func', None), '__name__', 'step'))
  return wrapped


def constrain_rows(x: jax.Array) -> jax.Array:
  """Pins an activation's leading (row) axis to the batch axes, the rest whole on each chip.

  Without it the compiler's propagation may follow the parameters instead of the batch:
  under fsdp, whose `embed` rule splits every matrix's model-width side, it split the
  residual stream along d_model and kept every row on every chip (16x the activations of
  data parallelism over 16 chips, resharded by all-to-alls). A no-op outside `within_mesh`
  (pmap, decoding, init), where there is no batch split, or where the rows do not divide.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if shards == 1 or x.shape[0] % shards:
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, stacked: bool = False
                 ) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch axes.

  `stacked`: the arrays are [steps, rows, ...], several steps' batches for one call.
  """
  arrays = {k: np.asarray(v) for k, v in local_batch.items()}
  # One call for the whole dict: a single batched transfer per step.
  return jax.make_array_from_process_local_data(batch_sharding(mesh, stacked), arrays)


# --- pmap: plain data parallelism over one named device axis ------------------------------

PMAP_AXIS = 'devices'


def pmap_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh whose axis name matches pmap's, for placing stacked per-device inputs."""
  devices = list(jax.local_devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (PMAP_AXIS,), axis_types=(AxisType.Auto,))


def pmap_sharding(mesh: Mesh) -> NamedSharding:
  """The leading axis split over pmap's devices: the layout pmap wants its inputs in."""
  return NamedSharding(mesh, P(PMAP_AXIS))


def replicate_for_pmap(tree: Any, mesh: Mesh) -> Any:
  """Stacks one copy per device, already laid out the way pmap wants its inputs.

  (Placing them with a sharding over a mesh named like pmap's axis avoids the second
  compilation that `flax.jax_utils.replicate` causes.)
  """
  n = mesh.devices.size
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
                               pmap_sharding(mesh)),
      tree)


def abstract_replicate_for_pmap(tree: Any, mesh: Mesh) -> Any:
  """The shapes, dtypes and shardings `replicate_for_pmap(tree, mesh)` would return."""
  n = mesh.devices.size
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n,) + tuple(x.shape), x.dtype,
                                                     sharding=pmap_sharding(mesh)), tree)


def split_for_pmap(batch: Mapping[str, np.ndarray], mesh: Mesh, stacked: bool = False
                   ) -> dict[str, jax.Array]:
  """[B, ...] host arrays -> [devices, B / devices, ...] arrays, one slice per device.

  `stacked`: [steps, B, ...] -> [devices, steps, B / devices, ...].
  """
  n = mesh.devices.size
  sharding = pmap_sharding(mesh)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    rows = v.shape[int(stacked)]
    if rows % n:
      raise ValueError(f'batch of {rows} rows does not split over {n} devices')
    if stacked:
      v = v.reshape((v.shape[0], n, rows // n) + v.shape[2:]).swapaxes(0, 1)
    else:
      v = v.reshape((n, rows // n) + v.shape[1:])
    out[k] = jax.device_put(v, sharding)
  return out


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of a pmap-replicated pytree, as host arrays.

  Read from the device buffer directly: `x[0]` would compile a gather for every shape.
  """
  def first(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])
    return np.asarray(x)[0]
  return jax.tree.map(first, tree)

