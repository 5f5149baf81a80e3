"""transformer.platforms: with libtpu and jax's CUDA plugin installed (the test extra), a
CPU host starts only the CPU backend, quietly."""

import os
import subprocess
import sys

from tests.conftest import REPO

# What train.py and `python -m transformer` do first, then a first device query.
_ENTRY = ('from transformer import platforms\n'
          'chosen = platforms.skip_absent_accelerators()\n'
          'import jax\n'
          'print(chosen, jax.default_backend(), jax.devices()[0].platform)\n')


def test_a_cpu_host_starts_the_cpu_backend_without_a_word():
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}   # as a user's shell
  result = subprocess.run([sys.executable, '-c', _ENTRY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  _, backend, platform = result.stdout.split()
  if backend == 'cpu':   # (a host with TPU or GPU chips keeps them)
    assert platform == 'cpu'
    assert result.stderr == '', result.stderr   # no plugin's warnings or tracebacks
