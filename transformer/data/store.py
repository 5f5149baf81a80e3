"""The token store: a corpus tokenized once, on every core, into memory-mapped arrays.

    store = open_or_build(source, tokenizer, tokenizer_dir, directory, num_workers=0)
    store.splits['train']['source']        # Ragged: flat int32 tokens + int64 offsets

A source (`transformer.data.sources`) cuts each split into chunks that a worker process
reads and tokenizes on its own (a byte range of local files, a record range of a TFDS
ArrayRecord source), so no process holds the corpus's strings; each worker writes its
chunk's token ids to disk, and the parent concatenates the chunks into one flat `.npy`
per split and column, plus offsets (and labels). Later runs, and every other host, open
the arrays with `mmap_mode='r'`: memory grows with what is read, not with the corpus.

The store is written into a temporary folder and renamed into place when complete, its
`manifest.json` last: a crash or a full disk while writing never leaves a store that
later opens as complete. The manifest records the source's fingerprint (files' sizes and
modification times, or the TFDS version) and the tokenizer's hash; when either changed,
the store is rebuilt, with a log line saying why.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transformer.errors import DataError

MANIFEST = 'manifest.json'
FORMAT = 1   # bumped when the layout changes: older stores are rebuilt


class Ragged:
  """Variable-length int32 sequences stored as one flat array plus offsets (both may be
  memory-mapped)."""

  def __init__(self, flat: np.ndarray, offsets: np.ndarray):
    self.flat, self.offsets = flat, offsets

  @classmethod
  def from_lists(cls, seqs: Sequence[Sequence[int]]) -> Ragged:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return cls(flat, offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    return self.flat[self.offsets[i]:self.offsets[i + 1]]

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


class TokenStore:
  """`splits[split][column]`: a `Ragged` of token ids, or an int32 array for 'label'."""

  def __init__(self, splits: dict[str, dict[str, Any]], directory: Path | None = None):
    self.splits, self.directory = splits, directory

  @classmethod
  def open(cls, directory: Path) -> TokenStore:
    manifest = json.loads((directory / MANIFEST).read_text())
    splits: dict[str, dict[str, Any]] = {}
    for split, columns in manifest['splits'].items():
      for column in columns:
        path = lambda kind: directory / f'{split}.{column}.{kind}.npy'
        if column == 'label':
          splits.setdefault(split, {})[column] = np.load(path('values'), mmap_mode='r')
        else:
          splits.setdefault(split, {})[column] = Ragged(np.load(path('tokens'), mmap_mode='r'),
                                                        np.load(path('offsets'), mmap_mode='r'))
    return cls(splits, directory)


# --- building -------------------------------------------------------------------------------

def _tokenize_chunk(task: tuple) -> dict[str, Any]:
  """In a worker: read one chunk, tokenize it, write its arrays; returns their lengths.

  Runs in a fresh process: it imports only the source and tokenizer modules (no JAX).
  """
  read_chunk, descriptor, columns, tokenizer_dir, out_prefix = task
  from transformer.data.tokenizers import encode_many, load_tokenizer
  tokenizer = load_tokenizer(tokenizer_dir)
  values_by_column = read_chunk(descriptor)
  counts = {}
  for column in columns:
    values = values_by_column[column]
    if column == 'label':
      np.save(f'{out_prefix}.label.values.npy', np.asarray(values, np.int32))
      counts[column] = len(values)
      continue
    ids = list(encode_many(tokenizer, values))
    lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
    flat = np.fromiter((t for x in ids for t in x), np.int32, count=int(lengths.sum()))
    np.save(f'{out_prefix}.{column}.lengths.npy', lengths)
    np.save(f'{out_prefix}.{column}.tokens.npy', flat)
    counts[column] = len(ids)
  return counts


def _concatenate(parts: list[Path], target: Path) -> int:
  """Concatenates 1-D .npy files into one, streaming (never all in memory)."""
  arrays = [np.load(p, mmap_mode='r') for p in parts]
  total = sum(len(a) for a in arrays)
  dtype = arrays[0].dtype if arrays else np.int32
  out = np.lib.format.open_memmap(target, mode='w+', dtype=dtype, shape=(total,))
  position = 0
  for a in arrays:
    out[position:position + len(a)] = a
    position += len(a)
  out.flush()
  del out
  return total


def default_workers() -> int:
  """The cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _write(tmp: Path, split: str, columns: set[str], count: int) -> None:
  """Concatenates a split's chunk files into its store arrays, then removes them."""
  prefixes = [tmp / f'{split}.{i:06d}' for i in range(count)]
  for column in sorted(columns):
    if column == 'label':
      _concatenate([Path(f'{p}.label.values.npy') for p in prefixes],
                   tmp / f'{split}.label.values.npy')
      continue
    _concatenate([Path(f'{p}.{column}.tokens.npy') for p in prefixes],
                 tmp / f'{split}.{column}.tokens.npy')
    lengths = np.concatenate([np.load(f'{p}.{column}.lengths.npy') for p in prefixes])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(tmp / f'{split}.{column}.offsets.npy', offsets)
  for p in prefixes:
    for part in tmp.glob(f'{p.name}.*'):
      part.unlink()


def build(source, splits: Sequence[str], tokenizer_dir: Path, directory: Path,
          manifest: dict, *, columns: Sequence[str], num_workers: int = 0,
          lines_per_chunk: int = 25_000) -> TokenStore:
  """Tokenizes every split of `source` (see `transformer.data.sources`) chunk by chunk in
  `num_workers` processes (0: one per core; corpora under 8 chunks are tokenized in this
  process) and writes the store at `directory`, atomically. A chunk of 25k lines keeps a
  worker's Python lists of token ids to tens of megabytes."""
  directory = Path(directory)
  tmp = directory.with_name(f'{directory.name}.tmp-{os.getpid()}')
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  tasks = ((split, i, chunk) for split in splits
           for i, chunk in enumerate(source.chunks(split, lines_per_chunk)))
  # Spawning workers costs seconds: a corpus this small tokenizes faster in-process.
  big = sum(source.num_examples(split) for split in splits) > 8 * lines_per_chunk
  workers = (num_workers or default_workers()) if big else 1
  start = time.perf_counter()
  written: dict[str, set[str]] = {split: set() for split in splits}
  counts: dict[str, int] = {split: 0 for split in splits}
  columns = tuple(columns)

  def work(task):
    split, i, chunk = task
    return split, _tokenize_chunk((read_chunk, chunk, columns, str(tokenizer_dir),
                                   str(tmp / f'{split}.{i:06d}')))

  try:
    from transformer.data.sources import read_chunk
    if workers == 1:
      results = map(work, tasks)
    else:
      results = _in_workers(tasks, workers, read_chunk, columns, tokenizer_dir, tmp)
    for split, chunk_columns in results:
      written[split].update(chunk_columns)
      counts[split] += 1
    for split in splits:
      _write(tmp, split, written[split], counts[split])
    manifest = {**manifest, 'splits': {s: sorted(c) for s, c in written.items()},
                'build_seconds': round(time.perf_counter() - start, 1), 'workers': workers}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))   # last: marks it complete
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  except OSError as error:
    shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(f'could not write the token store {directory}: '
                    f'{error.strerror or error} (is the disk full? data.data_dir chooses '
                    'where it goes)') from error
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return TokenStore.open(directory)


def _in_workers(tasks, workers: int, read_chunk, columns, tokenizer_dir: Path, tmp: Path):
  """Yields (split, columns written) of each task, tokenized in `workers` processes, with
  at most 2 x workers chunks in flight (a TFDS chunk carries its texts)."""
  # 'spawn': the parent runs JAX's threads, which a fork would copy half-alive.
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    pending = collections.deque()
    for split, i, chunk in tasks:
      pending.append((split, pool.submit(_tokenize_chunk, (
          read_chunk, chunk, columns, str(tokenizer_dir), str(tmp / f'{split}.{i:06d}')))))
      if len(pending) >= 2 * workers:
        split_done, future = pending.popleft()
        yield split_done, future.result()    # a worker's error is raised here
    while pending:
      split_done, future = pending.popleft()
      yield split_done, future.result()


def open_or_build(source, splits: Sequence[str], tokenizer_dir: Path, directory: Path, *,
                  key: dict, columns: Sequence[str], num_workers: int = 0,
                  log=logging.info) -> TokenStore:
  """The store at `directory` if it was built from this source (unchanged on disk) with this
  tokenizer; else (re)built, with a line saying why."""
  directory = Path(directory)
  manifest_path = directory / MANIFEST
  reason = 'no token store yet'
  if manifest_path.is_file():
    try:
      built = json.loads(manifest_path.read_text())
    except ValueError:
      built = {}
    changed = [k for k in key if built.get('key', {}).get(k) != key[k]]
    if not changed:
      return TokenStore.open(directory)
    reason = 'the ' + ' and the '.join(
        {'source': 'corpus changed on disk', 'tokenizer': 'tokenizer changed'}.get(k, f'{k} changed')
        for k in changed)
  for stale in directory.parent.glob(f'{directory.name}.tmp-*'):   # an interrupted build
    shutil.rmtree(stale, ignore_errors=True)
  log(f'token store {directory}: {reason}: tokenizing '
      f'{sum(source.num_examples(s) for s in splits):,} examples')
  return build(source, splits, tokenizer_dir, directory, {'key': key}, columns=columns,
               num_workers=num_workers)


def in_memory(source, splits: Sequence[str], tokenizer, columns: Sequence[str]) -> TokenStore:
  """A store that never touches the disk, for small generated sources (synthetic data)."""
  from transformer.data.tokenizers import encode_many
  out: dict[str, dict[str, Any]] = {}
  for split in splits:
    values = source.read_split(split)
    out[split] = {c: np.asarray(values[c], np.int32) if c == 'label'
                  else Ragged.from_lists(list(encode_many(tokenizer, values[c])))
                  for c in columns}
  return TokenStore(out)
