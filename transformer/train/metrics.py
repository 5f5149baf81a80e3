"""Metric writers (metrics.jsonl and TensorBoard) and throughput/MFU accounting.

metrics.jsonl holds one strict-JSON object per logged step, e.g.
`{"step": 200, "train/loss": 1.93, "train/first_step": 101, "train/tokens_per_sec": 21000}`
(training windows say which steps they average: `train/first_step` .. `step`) or
`{"step": 200, "eval/loss": 2.01, ...}`. A value that is not finite is written as `null`
(strict JSON has no NaN). When a run resumes from step s, lines of later steps (written
before a crash, after the checkpoint it resumes from) are dropped, so each step is logged
once; `read_metrics` reads the file.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import threading
import time
from typing import Mapping

import jax
import jax.numpy as jnp

from transformer import chips, storage


class MetricWriter:
  """Appends `{"step": s, "train/loss": ...}` lines to metrics.jsonl and TensorBoard events.

  Only process 0 writes; other processes get a writer that does nothing. In a workdir on
  an object store (a URL), whose objects are immutable, each write replaces metrics.jsonl
  whole (one upload: a reader never sees a torn file), and the TensorBoard events are
  written to a local spool (the workdir's cache) and copied to `workdir/tensorboard` at
  each flush and at the end.
  """

  def __init__(self, workdir, enabled: bool = True, resume_step: int | None = None):
    """`resume_step`: the checkpoint step a resumed run starts from; later lines go."""
    self.enabled = enabled
    self._tb = None
    self._opening = None
    if not enabled:
      return
    workdir = storage.path(workdir)
    self.path = workdir / 'metrics.jsonl'
    self._remote = storage.is_url(workdir)
    self._lines: list[str] = []
    if self._remote:
      self._tb_target = workdir / 'tensorboard'
      tb_dir = storage.local_dir(workdir) / 'tensorboard'
      if self.path.exists():
        self._lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        self._drop_after(0 if resume_step is None else resume_step)
    else:
      tb_dir = workdir / 'tensorboard'
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if self.path.exists():
        self._drop_after(0 if resume_step is None else resume_step)
    # tensorboardX imports PyTorch when it is installed (over a second): open the writer in
    # the background while the run starts up.
    self._tb_dir = tb_dir
    self._opening = threading.Thread(target=self._open_tensorboard, args=(tb_dir,),
                                     daemon=True)
    self._opening.start()

  def _open_tensorboard(self, directory: pathlib.Path) -> None:
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard events are a convenience, metrics.jsonl is the record
      return
    self._tb = SummaryWriter(str(directory))

  def _tensorboard(self):
    if self._opening is not None:
      self._opening.join()
      self._opening = None
    return self._tb

  def _drop_after(self, step: int) -> None:
    """Keeps the lines of steps <= `step` (written atomically: a crash here loses nothing)."""
    if self._remote:
      kept = [line for line in self._lines if json.loads(line)['step'] <= step]
      if len(kept) != len(self._lines):
        self._lines = kept
        self._upload()
      return
    lines = self.path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
    if len(kept) != len([line for line in lines if line.strip()]):
      tmp = self.path.with_suffix('.jsonl.tmp')
      tmp.write_text(''.join(line + '\n' for line in kept))
      tmp.replace(self.path)

  def _upload(self) -> None:
    self.path.write_text(''.join(line + '\n' for line in self._lines))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled or not scalars:
      return
    values = {k: v if isinstance(v, int) else float(v) for k, v in scalars.items()}
    record = {'step': int(step), **{k: v if math.isfinite(v) else None
                                    for k, v in values.items()}}
    line = json.dumps(record, allow_nan=False)
    if self._remote:
      self._lines.append(line)
      self._upload()
    else:
      with self.path.open('a') as f:
        f.write(line + '\n')
    if (tb := self._tensorboard()) is not None:
      for k, v in values.items():
        tb.add_scalar(k, v, int(step))

  def _sync_tensorboard(self) -> None:
    if self.enabled and self._remote and self._tb_dir.is_dir():
      storage.upload_tree(self._tb_dir, self._tb_target)

  def flush(self) -> None:
    if (tb := self._tensorboard()) is not None:
      tb.flush()
      self._sync_tensorboard()

  def close(self) -> None:
    if (tb := self._tensorboard()) is not None:
      tb.close()
      self._sync_tensorboard()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The records of metrics.jsonl, in order (a non-finite value reads as None)."""
  path = storage.path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- throughput and model-FLOPs utilisation ------------------------------------------------

# Dense bfloat16 peaks per chip from the vendors' data sheets (transformer/chips.py cites
# them), keyed by the words of `device.device_kind` they must contain (longest key first,
# whole words: 'L4' is not 'L40S', 'H100 PCIe' is not the SXM part).
PEAK_BF16_FLOPS = {**chips.GPU_PEAK_BF16_FLOPS, **chips.tpu_peak_bf16_flops()}


def _words(text: str) -> list[str]:
  return re.findall(r'[a-z0-9]+', text.lower())


def data_sheet_peak(device_kind: str) -> float | None:
  """The data-sheet bf16 peak of a device kind, or None when it is not in the table."""
  kind = _words(device_kind)
  for name in sorted(PEAK_BF16_FLOPS, key=lambda n: -len(_words(n))):
    key = _words(name)
    if any(kind[i:i + len(key)] == key for i in range(len(kind) - len(key) + 1)):
      return PEAK_BF16_FLOPS[name]
  return None


def measured_matmul_flops(size: int = 1024, repeats: int = 10, dtype=jnp.float32) -> float:
  """FLOP/s of a square matrix product on the default device: the ceiling on a CPU."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def device_peak_flops(device: jax.Device | None = None) -> tuple[float, str]:
  """(peak FLOP/s per device, how it was obtained): a data-sheet figure for known
  accelerators, else a matrix product measured now (CPUs)."""
  device = device or jax.devices()[0]
  kind = getattr(device, 'device_kind', '')
  if (flops := data_sheet_peak(kind)) is not None:
    return flops, f'{kind} bf16 data sheet'
  # The CPU "devices" of one process share its cores (and the matrix product used them all).
  shared_by = len(jax.local_devices(backend=device.platform))
  return (measured_matmul_flops() / shared_by,
          f'{kind or device.platform} measured f32 matmul / {shared_by} devices')


class Throughput:
  """Tokens/s and MFU between successive `update` calls, not counting `exclude`d time
  (evaluation, checkpointing)."""

  def __init__(self, flops_per_token: float, peak_flops_total: float):
    self.flops_per_token = flops_per_token
    self.peak = peak_flops_total
    self._last = None
    self._excluded = 0.0

  def update(self, tokens: float) -> dict[str, float]:
    now = time.perf_counter()
    out = {}
    if self._last is not None:
      seconds = now - self._last - self._excluded
      if seconds > 0:
        rate = tokens / seconds
        out = {'train/tokens_per_sec': rate,
               'train/mfu': rate * self.flops_per_token / self.peak}
    self._last = now
    self._excluded = 0.0
    return out

  def exclude(self, seconds: float) -> None:
    self._excluded += seconds


def to_float(tree) -> dict[str, float]:
  """Device scalars -> Python floats, in one transfer."""
  return {k: float(v) for k, v in jax.device_get(tree).items()}
