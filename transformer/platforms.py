"""Which JAX platforms to start: no TPU runtime on a host without TPUs.

With libtpu installed (the `tpu` extra, which `--compile_for` needs and CI installs), JAX
loads the TPU runtime at its first device query on any host; on one without TPU chips
that costs about half a second and prints libtpu's warnings about TPU workers it cannot
find. `skip_absent_tpu()` (train.py, `python -m transformer`, the tests) leaves the TPU out
of `jax_platforms` there, before any backend starts; compiling for a TPU topology
(`transformer.train.plan`) does not need the TPU backend and still works. An explicit
`JAX_PLATFORMS` always wins.
"""

from __future__ import annotations

import importlib.util
import os


def skip_absent_tpu() -> str | None:
  """Sets `jax_platforms` to the backends this host has when libtpu is installed but no TPU
  chip is attached; returns what it set (None: left alone)."""
  if os.environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None:
    return None
  import jax
  from jax._src import hardware_utils, xla_bridge
  if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
    return None
  if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
    return None   # a TPU host
  cuda = any(importlib.util.find_spec(f'jax_cuda{v}_plugin') for v in (12, 13))
  platforms = 'cuda,cpu' if cuda and hardware_utils.has_visible_nvidia_gpu() else 'cpu'
  jax.config.update('jax_platforms', platforms)
  os.environ['JAX_PLATFORMS'] = platforms   # and for the processes this one starts
  return platforms
