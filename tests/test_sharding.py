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
