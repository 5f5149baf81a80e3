"""Shared fixtures. Tests run on CPU; sharding tests ask for 8 fake devices themselves."""

import os
import pathlib

import pytest

# Compiled functions are cached on disk across test processes and runs.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/transformer_jax_cache')

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is absent')
  return SHARED_DATA
