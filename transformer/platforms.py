"""Which JAX platforms to start: no TPU or CUDA runtime on a host without those chips.

With libtpu installed (the `tpu` extra, which `--compile_for` needs and CI installs), JAX
loads the TPU runtime at its first device query on any host; on one without TPU chips
that costs about half a second and prints libtpu's warnings about TPU workers it cannot
find. With jax's CUDA plugin installed (the `gpu-export` extra, for exporting GPU programs
with cuDNN attention; CI installs it too), JAX tries to start CUDA on any host and, without
a GPU, logs a traceback ("Unable to load CUDA"). `skip_absent_accelerators()` (train.py,
`python -m transformer`, the tests) leaves such platforms out of `jax_platforms` there,
before any backend starts; compiling for a TPU topology (`transformer.train.plan`) and
exporting for CUDA (`transformer.train.export`) need neither backend and still work. An
explicit `JAX_PLATFORMS` always wins, and a host with the chips is left to JAX.
"""

from __future__ import annotations

import importlib.util
import os


def skip_absent_accelerators() -> str | None:
  """Sets `jax_platforms` to the backends this host has when libtpu or jax's CUDA plugin
  is installed but no such chip is attached; returns what it set (None: left alone)."""
  tpu = importlib.util.find_spec('libtpu') is not None
  cuda = any(importlib.util.find_spec(f'jax_cuda{v}_plugin') for v in (12, 13))
  if os.environ.get('JAX_PLATFORMS') or not (tpu or cuda):
    return None
  import jax
  from jax._src import hardware_utils, xla_bridge
  if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
    return None
  if tpu and hardware_utils.num_available_tpu_chips_and_device_id()[0]:
    return None   # a TPU host
  gpu = cuda and hardware_utils.has_visible_nvidia_gpu()
  if gpu and not tpu:
    return None   # a GPU host without libtpu: JAX's own choice is right
  platforms = 'cuda,cpu' if gpu else 'cpu'
  jax.config.update('jax_platforms', platforms)
  os.environ['JAX_PLATFORMS'] = platforms   # and for the processes this one starts
  return platforms
