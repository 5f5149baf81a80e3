"""Accelerator chips' data-sheet figures: memory, memory bandwidth and peak bfloat16 FLOP/s.

The one table of them: the MFU of a run (`transformer.train.metrics`) and the plan of a
run compiled for a TPU slice (`transformer.train.plan`) both read it. Figures are per chip
as the vendors publish them (each row cites its page); the HBM is the chip's, of which the
TPU runtime keeps a little for itself (a v5e's compiler offers 15.75 GiB of its 16).
"""

from __future__ import annotations

import dataclasses
import re

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str                  # the topology names' prefix: 'v5e' in 'v5e:4x4'
  device_kind: str           # what `jax.Device.device_kind` says
  hbm_bytes: int
  hbm_bytes_per_second: float
  peak_bf16_flops: float     # dense bfloat16 FLOP/s


TPU_CHIPS = {c.name: c for c in (
    # https://cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 1200 GB/s, 275 TFLOP/s bf16.
    Chip('v4', 'TPU v4', 32 * GiB, 1200e9, 275e12),
    # https://cloud.google.com/tpu/docs/v5e: 16 GiB HBM2, 819 GB/s, 197 TFLOP/s bf16.
    Chip('v5e', 'TPU v5 lite', 16 * GiB, 819e9, 197e12),
    # https://cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e, 2765 GB/s, 459 TFLOP/s bf16.
    Chip('v5p', 'TPU v5', 95 * GiB, 2765e9, 459e12),
    # https://cloud.google.com/tpu/docs/v6e: 32 GiB HBM, 1640 GB/s, 918 TFLOP/s bf16.
    Chip('v6e', 'TPU v6 lite', 32 * GiB, 1640e9, 918e12),
)}

# Other device kinds' dense bf16 peaks (FLOP/s), for the MFU of a run on them; keyed by the
# words of `device.device_kind` they must contain. NVIDIA's data sheets (dense, no sparsity):
# https://www.nvidia.com/en-us/data-center/h100/ (SXM 989, PCIe 756 TFLOP/s),
# https://www.nvidia.com/en-us/data-center/h200/, https://www.nvidia.com/en-us/data-center/a100/,
# https://www.nvidia.com/en-us/data-center/l40s/, https://www.nvidia.com/en-us/data-center/l4/,
# https://www.nvidia.com/en-us/data-center/products/a10-gpu/.
GPU_PEAK_BF16_FLOPS = {
    'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L40S': 362e12,
    'L4': 121e12, 'A10': 125e12,
}


def tpu_peak_bf16_flops() -> dict[str, float]:
  """TPU rows keyed by device kind and by the chip's short name ('TPU v5e')."""
  rows = {}
  for chip in TPU_CHIPS.values():
    rows[chip.device_kind] = chip.peak_bf16_flops
    rows[f'TPU {chip.name}'] = chip.peak_bf16_flops
  return rows


def chip_for_topology(topology_name: str) -> Chip | None:
  """The chip of a topology name such as 'v5e:4x4' (None: not in the table)."""
  return TPU_CHIPS.get(topology_name.split(':')[0].strip().lower())


def chip_for_device_kind(device_kind: str) -> Chip | None:
  words = re.findall(r'[a-z0-9]+', device_kind.lower())
  for chip in TPU_CHIPS.values():
    if words == re.findall(r'[a-z0-9]+', chip.device_kind.lower()):
      return chip
  return None
