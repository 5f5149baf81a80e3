"""Batches from token ids: packed or padded training batches, padded evaluation batches.

What a task asks of the pipeline is a `Needs`: the sequences it feeds its model (each built
from a text column with or without bos/eos, up to a row length), whether it reads a label,
whether its training rows may be packed, and a `finalize` that turns the assembled arrays
into the step's batch (decoder inputs, weights, MLM masks...). The pipeline itself knows no
task.

Training (``train_dataset``)::

    PackedBatches (a grain.IterDataset): this process's shard of the examples,
      shuffled with a new seeded permutation every epoch, repeated num_epochs times,
      first-fit packed into `rows` rows (or one example per row), then finalized.

Grain's own ``FirstFitPackIterDataset`` does the same packing but spends ~100 us per
example in per-element tree bookkeeping (~300k tokens/s on Multi30k); ``PackedBatches``
places examples with one NumPy test each and assembles a batch with a few vectorised
scatters. The iterator's ``get_state()`` is ``{'next_index': i}`` (JSON-serialisable):
the stream index of the next batch's first example; a batch is a pure function of it,
so a restored iterator resumes the exact same stream, in this process or a fresh one.

Character LMs use ``window_train_dataset``: Grain ``MapDataset.range(offsets)[shard]
.shuffle(seed).repeat().to_iter_dataset().batch(rows)`` gathering nanoGPT windows.

Sharding: the kept examples (after dropping overlong ones) are split round robin,
``indices[process_index::process_count]``; each process shuffles and packs only its
own shard, so each process's batch holds ``global_batch_size // process_count`` rows.

Evaluation (``EvalBatches``): every example of a split exactly once, in order, padded
(never packed), overlong ones truncated (never dropped); global batch ``b`` holds
examples ``[b * G, (b + 1) * G)`` and process ``p`` gets its slice of rows
``[p * G / P, (p + 1) * G / P)``; the last batch is filled with all-zero rows whose
weights are 0, so every process runs the same number of eval steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Protocol

import grain
import numpy as np

from transformer.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from transformer.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------
# What a task asks for.


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
  """One model input built from a text column: [bos] + ids + [eos], at most `length`."""
  column: str          # 'source' | 'target' | 'text'
  length: int
  bos: bool = False
  eos: bool = False


class Finalize(Protocol):
  def __call__(self, batch: Batch, *, packed: bool, rng: np.random.Generator,
               tokenizer: Any) -> Batch: ...


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a task needs from the data: see the module docstring."""
  sequences: Mapping[str, SequenceSpec]
  finalize: Finalize
  label: bool = False           # examples carry an integer label (classification)
  packable: bool = True         # training rows may hold several examples
  windows: bool = False         # nanoGPT windows over the token stream (character LMs)

  @property
  def columns(self) -> tuple[str, ...]:
    """The raw columns a source must provide."""
    names = dict.fromkeys(s.column for s in self.sequences.values())
    return tuple(names) + (('label',) if self.label else ())


# ----------------------------------------------------------------------------
# Examples: token ids from the store, with specials and length limits applied on the fly.


@dataclasses.dataclass(frozen=True)
class Specials:
  """The tokenizer's special ids that batches are built with."""
  pad: int = PAD_ID           # fills padding (0 when the vocabulary has no pad id)
  bos: int | None = BOS_ID
  eos: int | None = EOS_ID

  @classmethod
  def of(cls, tokenizer) -> Specials:
    """A vocabulary without a pad id pads with 0 (weights come from segment ids, never
    from token values); one without a start token starts sequences with its end token
    (GPT-2's <|endoftext|> is both). No tokenizer: our own ids."""
    if tokenizer is None:
      return cls()
    pad = getattr(tokenizer, 'pad_id', PAD_ID)
    eos = getattr(tokenizer, 'eos_id', None)
    bos = getattr(tokenizer, 'bos_id', None)
    return cls(pad if pad is not None and pad >= 0 else 0, eos if bos is None else bos, eos)


class Examples:
  """The examples of a split that fit (or were truncated to) the row lengths, read from
  the store's (memory-mapped) token ids without copying them: specials are added and
  truncation applied when an example is read (`tokens`)."""

  def __init__(self, tokens: dict[str, Any], needs: Needs, *, truncate: bool,
               specials: Specials):
    self.specs = dict(needs.sequences)
    self.sources = {name: tokens[spec.column] for name, spec in self.specs.items()}
    self.specials = specials
    lengths = {}
    for name, spec in self.specs.items():
      for special, token in (('bos', specials.bos), ('eos', specials.eos)):
        if getattr(spec, special) and token is None:
          raise ConfigError(f'this task puts a {special} token around its sequences, but the '
                            'tokenizer has none (data.tokenizer)')
      # int32 throughout: these arrays grow with the corpus (36 MB per 4.5M examples).
      lengths[name] = (self.sources[name].lengths + int(spec.bos) + int(spec.eos)
                       ).astype(np.int32)
    limits = np.array([spec.length for spec in self.specs.values()], np.int32)
    stacked = np.stack([lengths.pop(name) for name in self.specs], axis=1)   # [N, F]
    if truncate:
      self.index = np.arange(len(stacked), dtype=np.int32)
      self.lengths = np.minimum(stacked, limits)
    else:
      self.index = np.flatnonzero((stacked <= limits).all(axis=1)).astype(np.int32)
      self.lengths = stacked[self.index]
    self.label = None
    if needs.label:
      self.label = np.asarray(tokens['label'], np.int32)[self.index]

  def __len__(self) -> int:
    return len(self.index)

  def tokens(self, name: str, i: int) -> np.ndarray:
    """Example i's `name` sequence: [bos] + ids + [eos], truncated to its row length."""
    spec = self.specs[name]
    ids = self.sources[name][int(self.index[i])]
    keep = spec.length - int(spec.bos) - int(spec.eos)
    parts = ([[self.specials.bos]] if spec.bos else []) + [ids[:max(keep, 0)]] + (
        [[self.specials.eos]] if spec.eos else [])
    return np.concatenate(parts).astype(np.int32)


# ----------------------------------------------------------------------------
# Helpers for finalize functions.


def pad_rows(batch: Batch, rows: int) -> Batch:
  """Appends all-zero rows so every batch has ``rows`` rows."""
  n = next(iter(batch.values())).shape[0]
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def shift_right(targets: np.ndarray, valid: np.ndarray, positions: np.ndarray | None = None, *,
                bos: int = BOS_ID, pad: int = PAD_ID) -> np.ndarray:
  """bos + targets[:-1] within each segment, `pad` where `valid` is False (teacher forcing).
  Without ``positions`` every row is one sequence starting at column 0."""
  shifted = np.zeros_like(targets)
  shifted[:, 1:] = targets[:, :-1]
  if positions is None:
    starts = np.zeros(targets.shape, bool)
    starts[:, 0] = True
  else:
    starts = positions == 0
  out = np.where(starts, bos, shifted)
  return np.where(valid, out, pad).astype(np.int32)


# ----------------------------------------------------------------------------
# Training pipelines.


def shard_indices(n: int, process_index: int, process_count: int) -> np.ndarray:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return np.arange(process_index, n, process_count, dtype=np.int32)


class PackedBatches(grain.IterDataset):
  """First-fit packing of a shuffled, repeated example stream into batches.

  The stream is ``shard[perm_e[j]]`` for stream index ``i = e * n + j`` (``perm_e`` a
  seeded permutation of epoch ``e``). Examples go, in stream order, into the first of
  ``rows`` rows where every feature still fits; when one fits in no row, the batch is
  emitted and that example starts the next one (Grain's ``FirstFitPackIterDataset``
  rule, done here with NumPy per batch, about 30x faster). With
  ``max_per_row=1`` each row holds one example (padding instead of packing).

  A batch holds each feature ``f`` with ``f_segment_ids`` and ``f_positions`` (and
  ``label`` when the examples have one), padding filled with the pad id, then goes
  through ``batch_transform(batch, first_stream_index)``.

  The iterator state is ``{'next_index': i}``: the stream index of the first example
  of the next batch; a batch depends only on that index, so it is fully resumable.
  """

  def __init__(self, examples: Examples, shard: np.ndarray, *, lengths: dict[str, int], rows: int,
               seed: int, num_epochs: int | None, max_per_row: int | None = None,
               batch_transform: Callable[[Batch, int], Batch] | None = None):
    super().__init__()
    self.examples, self.shard, self.lengths, self.rows = examples, shard, lengths, rows
    self.seed, self.num_epochs, self.max_per_row = seed, num_epochs, max_per_row
    self.batch_transform = batch_transform
    self.feature_lengths = examples.lengths     # [N, F], in the order of `lengths`
    self.capacity = np.array([lengths[f] for f in lengths], np.int64)

  def __iter__(self) -> PackedBatchIterator:
    return PackedBatchIterator(self)

  def __str__(self) -> str:
    return f'PackedBatches(rows={self.rows}, lengths={self.lengths})'


class PackedBatchIterator(grain.DatasetIterator):

  def __init__(self, ds: PackedBatches):
    super().__init__()
    self._ds = ds
    self._next_index = 0
    self._perm_epoch, self._perm = -1, None
    n = len(ds.shard)
    self._end = None if ds.num_epochs is None else n * ds.num_epochs

  def get_state(self) -> dict[str, Any]:
    return {'next_index': int(self._next_index)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._next_index = int(state['next_index'])

  def _example(self, i: int) -> int:
    n = len(self._ds.shard)
    epoch, j = divmod(i, n)
    if epoch != self._perm_epoch:
      rng = np.random.default_rng([self._ds.seed, epoch])
      order = rng.permutation(n).astype(np.int32)
      self._perm, self._perm_epoch = self._ds.shard[order], epoch
    return int(self._perm[j])

  def __next__(self) -> Batch:
    ds = self._ds
    if self._end is not None and self._next_index >= self._end:
      raise StopIteration
    start = i = self._next_index
    remaining = np.tile(ds.capacity, (ds.rows, 1))  # [rows, F]
    counts = np.zeros(ds.rows, np.int64)
    placed_rows, placed_examples, placed_offsets = [], [], []
    while self._end is None or i < self._end:
      e = self._example(i)
      lens = ds.feature_lengths[e]
      fits = (remaining >= lens).all(axis=1)
      if ds.max_per_row is not None:
        fits &= counts < ds.max_per_row
      r = int(fits.argmax())
      if not fits[r]:
        if not placed_rows:  # an example longer than a row: cannot happen after Examples
          raise ValueError(f'Example {e} with lengths {lens} does not fit {ds.lengths}.')
        break
      placed_rows.append(r)
      placed_examples.append(e)
      placed_offsets.append(ds.capacity - remaining[r])
      remaining[r] -= lens
      counts[r] += 1
      i += 1
    self._next_index = i
    batch = self._assemble(np.array(placed_rows), placed_examples, np.array(placed_offsets))
    if ds.batch_transform is not None:
      batch = ds.batch_transform(batch, start)
    return batch

  def _assemble(self, rows: np.ndarray, examples: list[int], offsets: np.ndarray) -> Batch:
    ds = self._ds
    # Segment ids: the k-th example placed in a row is segment k + 1.
    order = np.lexsort((np.arange(len(rows)), rows))
    segment = np.empty(len(rows), np.int64)
    sorted_rows = rows[order]
    first = np.searchsorted(sorted_rows, sorted_rows, side='left')
    segment[order] = np.arange(len(rows)) - first + 1
    batch: Batch = {}
    for f_index, (name, length) in enumerate(ds.lengths.items()):
      seqs = [ds.examples.tokens(name, e) for e in examples]
      lens = ds.feature_lengths[examples, f_index]
      total = int(lens.sum())
      starts = np.zeros(len(lens), np.int64)
      np.cumsum(lens[:-1], out=starts[1:])
      within = np.arange(total) - np.repeat(starts, lens)
      dest = np.repeat(rows * length + offsets[:, f_index], lens) + within
      values = np.full(ds.rows * length, ds.examples.specials.pad, np.int32)
      values[dest] = np.concatenate(seqs) if seqs else []
      segs = np.zeros(ds.rows * length, np.int32)
      segs[dest] = np.repeat(segment, lens)
      pos = np.zeros(ds.rows * length, np.int32)
      pos[dest] = within
      batch[name] = values.reshape(ds.rows, length)
      batch[f'{name}_segment_ids'] = segs.reshape(ds.rows, length)
      batch[f'{name}_positions'] = pos.reshape(ds.rows, length)
    if ds.examples.label is not None:
      label = np.zeros(ds.rows, np.int32)
      label[rows] = ds.examples.label[examples]
      batch['label'] = label
    return batch


def train_dataset(examples: Examples, needs: Needs, *, rows: int, seed: int, pack: bool,
                  num_epochs: int | None, process_index: int, process_count: int,
                  tokenizer: Any) -> grain.IterDataset:
  """Shuffled, repeated, packed (or padded) batches of ``rows`` rows of this shard."""
  indices = shard_indices(len(examples), process_index, process_count)
  if len(indices) == 0:
    raise DataError(f'Process {process_index} of {process_count} has no training examples.')
  packed = pack and needs.packable

  def finalize(batch: Batch, start_index: int) -> Batch:
    # Anything random (MLM masks) depends only on (seed, the batch's first stream index),
    # so a resumed iterator reproduces it.
    batch = needs.finalize(batch, packed=packed,
                           rng=np.random.default_rng([seed, start_index]), tokenizer=tokenizer)
    return batch if packed else _without_segments(batch)

  return PackedBatches(examples, indices,
                       lengths={k: s.length for k, s in needs.sequences.items()}, rows=rows,
                       seed=seed, num_epochs=num_epochs, max_per_row=None if packed else 1,
                       batch_transform=finalize)


class WindowSource:
  """Random access to nanoGPT-style windows x = data[i:i+T], y = data[i+1:i+T+1]."""

  def __init__(self, data: np.ndarray, block_size: int):
    if len(data) <= block_size:
      raise DataError(f'Text of {len(data)} tokens is too short for windows of {block_size}.')
    self.data, self.block_size = data, block_size

  def __len__(self) -> int:
    return len(self.data) - self.block_size

  def gather(self, offsets: np.ndarray) -> Batch:
    idx = np.asarray(offsets, np.int64)[:, None] + np.arange(self.block_size)
    return {
        'inputs': self.data[idx].astype(np.int32),
        'targets': self.data[idx + 1].astype(np.int32),
        'weights': np.ones(idx.shape, np.float32),
    }


def window_train_dataset(
    windows: WindowSource, *, rows: int, seed: int, num_epochs: int | None,
    process_index: int, process_count: int,
) -> grain.IterDataset:
  """Random windows (every start offset once per epoch, shuffled), batched."""
  ds = grain.MapDataset.range(len(windows))[process_index::process_count]
  ds = ds.shuffle(seed=seed % 2**32).repeat(num_epochs)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  it = it.batch(rows, drop_remainder=True, batch_fn=np.asarray)
  return it.map(windows.gather)


# ----------------------------------------------------------------------------
# Evaluation.


class EvalBatches:
  """A finite, re-iterable sequence of padded batches (this process's slices)."""

  def __init__(self, arrays: Batch, *, global_batch_size: int, process_index: int, process_count: int):
    self._arrays = arrays
    self._n = next(iter(arrays.values())).shape[0]
    self._global = global_batch_size
    self._local = global_batch_size // process_count
    self._process_index = process_index

  def __len__(self) -> int:
    return math.ceil(self._n / self._global)

  def __getitem__(self, b: int) -> Batch:
    if not 0 <= b < len(self):
      raise IndexError(b)
    start = b * self._global + self._process_index * self._local
    stop = min(start + self._local, self._n)
    batch = {k: v[start:max(stop, start)] for k, v in self._arrays.items()}
    return pad_rows(batch, self._local)

  def __iter__(self) -> Iterator[Batch]:
    return (self[b] for b in range(len(self)))


def eval_arrays(examples: Examples, needs: Needs, *, seed: int, tokenizer: Any) -> Batch:
  """Every example of a split, padded (never packed) into one array per feature."""
  n = len(examples)
  batch: Batch = {}
  for name, spec in needs.sequences.items():
    values = np.full((n, spec.length), examples.specials.pad, np.int32)
    segments = np.zeros((n, spec.length), np.int32)
    for i in range(n):
      seq = examples.tokens(name, i)
      values[i, :len(seq)] = seq
      segments[i, :len(seq)] = 1
    batch[name] = values
    batch[f'{name}_segment_ids'] = segments
  if examples.label is not None:
    batch['label'] = examples.label
  return _without_segments(needs.finalize(batch, packed=False,
                                          rng=np.random.default_rng([seed, 2**31]),
                                          tokenizer=tokenizer))


def _without_segments(batch: Batch) -> Batch:
  """One example per row: the segment features say nothing to the model."""
  return {k: v for k, v in batch.items() if not k.endswith(('_segment_ids', '_positions'))}


def window_eval_arrays(data: np.ndarray, block_size: int) -> Batch:
  """Consecutive non-overlapping windows covering every target of ``data`` once."""
  num_targets = len(data) - 1
  num_rows = math.ceil(num_targets / block_size)
  flat_in = np.zeros(num_rows * block_size, np.int32)
  flat_tg = np.zeros(num_rows * block_size, np.int32)
  flat_w = np.zeros(num_rows * block_size, np.float32)
  flat_in[:num_targets] = data[:-1]
  flat_tg[:num_targets] = data[1:]
  flat_w[:num_targets] = 1.0
  shape = (num_rows, block_size)
  return {'inputs': flat_in.reshape(shape), 'targets': flat_tg.reshape(shape),
          'weights': flat_w.reshape(shape)}
