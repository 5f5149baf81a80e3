"""Meshes, logical-axis rules and layouts (more in tests/train/test_loop.py, on 8 devices)."""

import jax
import pytest

from transformer import sharding


def test_make_mesh_shapes():
  mesh = sharding.make_mesh({'data': -1})
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert mesh.devices.size == jax.device_count()
  assert sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}).devices.size == 1
  with pytest.raises(ValueError, match='unknown mesh axes'):
    sharding.make_mesh({'model': 2})
  with pytest.raises(ValueError, match='at most one'):
    sharding.make_mesh({'data': -1, 'fsdp': -1})


def test_constrain_rows_splits_the_rows_inside_a_mesh_only():
  import jax.numpy as jnp
  from jax.sharding import AbstractMesh
  mesh = AbstractMesh((2, 2, 1), sharding.MESH_AXES)

  def constraint(rows):
    jaxpr = jax.make_jaxpr(sharding.constrain_rows)(jnp.ones((rows, 3, 5))).jaxpr
    return [e.params['sharding'].spec for e in jaxpr.eqns
            if e.primitive.name == 'sharding_constraint']

  with jax.sharding.use_abstract_mesh(mesh):
    assert constraint(8) == [jax.sharding.PartitionSpec(('data', 'fsdp'))]
    assert constraint(6) == []   # 6 rows do not split over 4 shards: left to the compiler
  with jax.sharding.use_abstract_mesh(AbstractMesh((1, 1, 4), sharding.MESH_AXES)):
    assert constraint(8) == []   # no batch split (tensor parallel only)
  assert constraint(8) == []     # outside a mesh: pmap, decoding, init
