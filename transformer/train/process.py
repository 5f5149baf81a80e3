"""Process set-up, before anything touches a device: CPU devices and multi-host runs.

`train.py` calls `setup(config)` first thing in its main; both steps only work before JAX
starts its backends.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from transformer.train import peers


def split_cpu(count: int) -> None:
  """Splits the CPU into `count` XLA devices, for data parallelism on a host without
  accelerators.

  One XLA CPU device runs a small model's step as a chain of small kernels that leaves
  cores idle; two devices, each with half of the batch, keep them busy (the train step of
  configs/shakespeare_char.py is about 30% faster on 2 cores). Never overrides an explicit
  XLA_FLAGS=--xla_force_host_platform_device_count.
  """
  if not count or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # backends already running (a notebook, a test): keep their devices
    logging.info('cpu_devices=%d ignored: JAX is already initialized', count)


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` when the config or the environment asks for processes."""
  wanted = dist.num_processes > 1 or dist.auto or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not wanted or jax.distributed.is_initialized():
    return
  # CPU processes talk through gloo (GPUs and TPUs bring their own collectives).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  timeouts = dict(heartbeat_timeout_seconds=dist.heartbeat_timeout_seconds,
                  shutdown_timeout_seconds=dist.shutdown_timeout_seconds)
  if dist.num_processes > 1:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id,
                               **timeouts)
  else:
    # TPU VM pods, SLURM steps, Open MPI and Kubernetes jobs describe themselves.
    jax.distributed.initialize(**timeouts)
  # A process that dies is seen at once, not after the heartbeat timeout (peers.py).
  from jax._src import distributed   # the client and address Orbax uses too
  state = distributed.global_state
  peers.watch(state.process_id, state.num_processes, state.client,
              state.coordinator_address.rsplit(':', 1)[0])


def setup(config: ml_collections.ConfigDict) -> None:
  """CPU devices (`config.cpu_devices`), then the processes of a multi-host run."""
  split_cpu(config.cpu_devices)
  initialize_distributed(config.distributed)
