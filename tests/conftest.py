"""Shared fixtures and the one place that knows where the shared corpora are.

Tests run on CPU; sharding tests ask for 8 fake devices themselves (in subprocesses).
The real corpora live in ../shared/data beside the repository (never copied into it).
"""

import os
import pathlib

import pytest

from transformer import platforms

# libtpu and the CUDA plugin are installed for the --compile_for and export tests; their
# runtimes stay out of CPU hosts.
platforms.skip_absent_accelerators()

# Compiled functions are cached on disk across test processes and runs.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', '/tmp/transformer_jax_cache')

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
MULTI30K = SHARED_DATA / 'multi30k'
SHAKESPEARE = SHARED_DATA / 'tinyshakespeare' / 'input.txt'


def require(path: pathlib.Path) -> pathlib.Path:
  """`path`, or a skip that says it is missing (the corpora are optional beside a clone)."""
  if not path.exists():
    pytest.skip(f'{path} is absent: the shared corpora live in ../shared/data')
  return path


@pytest.fixture(scope='session')
def multi30k_workdir(tmp_path_factory):
  """A workdir for Multi30k runs (its SentencePiece model is trained once per session)."""
  require(MULTI30K)
  return tmp_path_factory.mktemp('multi30k')


from tests.cloud import gcs_bucket, gcs_server, s3_bucket, s3_server  # noqa: E402,F401
