"""A data config and what a task needs -> the tokenizer and batches.

    ds = get_datasets(config.data, task.data_needs(config.data), workdir=workdir,
                      global_batch_size=128, seed=0)
    it = ds.train_iter()            # checkpointable: it.get_state() / it.set_state(s)
    batch = next(it)                # this process's rows of the global batch
    for batch in ds.eval_batches('valid'): ...
    texts = ds.texts('valid')       # the split's raw columns, in eval-batch order

The steps: open the source (synthetic, a local file or folder, a TFDS catalog dataset);
make the tokenizer (SentencePiece trains on a bounded random sample of the train split the
first time); tokenize every split once into the token store (store.py: worker processes,
memory-mapped arrays); then build the training stream (packed examples or character
windows) and the padded evaluation arrays from the store. With several processes,
process 0 trains the tokenizer and builds the store while the others wait; then each
opens it and reads only its own shard.

`get_datasets` does it all; its three steps stand alone: `folders` (where this process
keeps the tokenizer and the store), `prepare` (the source, the tokenizer, the token
store) and `make_batches` (this process's batches). Config fields:
`transformer/data/config.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from transformer import storage
from transformer.data import sources as sources_lib
from transformer.data import store as store_lib
from transformer.data.pipeline import (
    EvalBatches, Examples, Needs, Specials, WindowSource, eval_arrays, train_dataset,
    window_eval_arrays, window_train_dataset,
)
from transformer.data.tokenizers import (
    CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer, synthetic_tokenizer,
)
from transformer.errors import ConfigError, DataError, MissingFileError

SPLITS = ('train', 'valid', 'test')


@dataclasses.dataclass
class Datasets:
  """What the trainer needs: the tokenizer, and train and eval data of this process."""

  tokenizer: Tokenizer
  splits: tuple[str, ...]
  _train_fn: Callable[[], Any]
  _eval_fn: Callable[[str], EvalBatches]
  _texts_fn: Callable[[str], dict[str, list]]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def train_iter(self):
    """A fresh Grain iterator of training batches (``get_state``/``set_state``)."""
    return iter(self._train_fn())

  def eval_batches(self, split: str = 'valid') -> EvalBatches:
    """Every example of ``split`` once, in order, padded; re-iterable and finite."""
    self._check_split(split)
    return self._eval_fn(split)

  def texts(self, split: str = 'valid') -> dict[str, list]:
    """The raw columns of ``split`` ('source'/'target' or 'text', ...), in eval order."""
    self._check_split(split)
    return self._texts_fn(split)

  def _check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ConfigError(f'No split {split!r}; this dataset has {self.splits}.')


def _open_source(config, needs: Needs, data_dir: Path, seed: int):
  """The configured source of the columns `needs` reads."""
  source = config.source
  if source == 'synthetic':
    kw = dict(num_symbols=config.synthetic_vocab, min_len=config.synthetic_min_len,
              max_len=config.synthetic_max_len)
    sizes = {'train': config.synthetic_train_size, 'valid': config.synthetic_eval_size,
             'test': config.synthetic_eval_size}
    splits = {}
    for k, (split, n) in enumerate(sizes.items()):
      if needs.label:
        splits[split] = sources_lib.synthetic_labelled(num_examples=n, seed=[seed, k], **kw)
      else:
        pairs = sources_lib.synthetic_pairs(config.synthetic_rule, num_examples=n,
                                            seed=[seed, k], **kw)
        splits[split] = {**pairs, 'text': pairs['target']}   # language models read targets
    return sources_lib.InMemory(splits, name='synthetic')
  if source == 'text':
    if not config.path:
      raise ConfigError("data.source='text' needs data.path (a text file).")
    if needs.label:
      raise ConfigError('a labelled task needs a labelled source (data.source=tfds with a '
                        'label feature, or synthetic)')
    return sources_lib.TextFile(config.path, config.valid_fraction, whole_text=needs.windows)
  if source == 'parallel':
    if not config.path:
      raise ConfigError("data.source='parallel' needs data.path (a corpus folder).")
    return sources_lib.ParallelFiles(config.path, config.src_lang or 'src',
                                     config.tgt_lang or 'tgt')
  if source == 'tfds':
    if not config.tfds_name:
      raise ConfigError("data.source='tfds' needs data.tfds_name.")
    return sources_lib.TfdsSource(
        config.tfds_name, columns=needs.columns, data_dir=str(config.tfds_data_dir or data_dir),
        src_lang=config.src_lang, tgt_lang=config.tgt_lang,
        reverse_translation=config.reverse_translation, text_key=config.tfds_text_key,
        label_key=config.tfds_label_key)
  raise ConfigError("data.source must be 'synthetic', 'text', 'parallel' or 'tfds', "
                    f'got {source!r}')


def _columns(source, needs: Needs) -> tuple[str, ...]:
  """The source's columns that `needs` reads (a text task reads a pair's target)."""
  missing = [c for c in needs.columns if c not in source.columns]
  if missing:
    raise ConfigError(f'the task reads the column(s) {missing}, but this data source has '
                      f'only {list(source.columns)}')
  return needs.columns


def _tokenizer_fingerprint(tokenizer, tokenizer_dir: Path) -> str:
  """What the token store's ids depend on: the saved tokenizer's files (any kind of
  tokenizer: SentencePiece, characters, a checkpoint's own) and its special ids."""
  h = hashlib.sha256(repr([getattr(tokenizer, f'{k}_id', None)
                           for k in ('pad', 'bos', 'eos', 'unk', 'mask')]).encode())
  files = sorted(p for p in tokenizer_dir.rglob('*') if p.is_file()) if tokenizer_dir.is_dir() else []
  for path in files:
    h.update(path.name.encode())
    h.update(path.read_bytes())
  if not files:   # not saved (synthetic): its characters
    h.update(json.dumps([getattr(tokenizer, 'chars', ''), tokenizer.vocab_size]).encode())
  return h.hexdigest()[:16]


def _make_tokenizer(config, source, columns, tokenizer_dir: Path, windows: bool, seed: int):
  """The run's tokenizer: saved in `tokenizer_dir` already, or made now and saved there."""
  kind = config.tokenizer
  if kind == 'synthetic':
    return synthetic_tokenizer(config.synthetic_vocab)
  if kind == 'pretrained':
    if not (tokenizer_dir / 'tokenizer.json').is_file():
      raise MissingFileError(f"data.tokenizer='pretrained' but {tokenizer_dir} holds no "
                             'tokenizer (set data.tokenizer_dir)')
    return load_tokenizer(tokenizer_dir)
  text_columns = [c for c in columns if c != 'label']
  if kind == 'char':
    if (tokenizer_dir / 'tokenizer.json').is_file():
      tok = load_tokenizer(tokenizer_dir)
      if isinstance(tok, CharTokenizer) and tok.specials == (not windows):
        return tok
    # Like nanoGPT: the vocabulary is every character of every split.
    chars: set[str] = set()
    for split in source.splits:
      for chunk in source.chunks(split, 200_000):
        values = sources_lib.read_chunk(chunk)
        for column in text_columns:
          for t in values[column]:
            chars.update(t)
    tok = CharTokenizer(chars, specials=not windows)
    tok.save(tokenizer_dir)
    return tok
  if kind == 'sentencepiece':
    tok = SentencePieceTokenizer.load_or_train(
        tokenizer_dir / 'spm.model',
        lambda: source.sample('train', config.tokenizer_sample_chars, seed),
        vocab_size=config.vocab_size, model_type=config.spm_model_type,
        num_threads=config.num_workers or store_lib.default_workers())
    tok.save(tokenizer_dir)
    return tok
  raise ConfigError("data.tokenizer must be 'synthetic', 'char', 'sentencepiece' or "
                    f"'pretrained', got {kind!r}")


def _store_directory(data_dir: Path, source, columns, windows: bool) -> Path:
  identity = hashlib.sha256(repr((source.name, columns, windows)).encode()).hexdigest()[:12]
  return data_dir / 'store' / f'{source.name}-{identity}'


def _default_barrier(process_count: int) -> Callable[[str], None]:
  if process_count == 1:
    return lambda name: None
  from jax.experimental import multihost_utils
  return multihost_utils.sync_global_devices


@dataclasses.dataclass(frozen=True)
class Folders:
  """Where this process keeps a run's token store and tokenizer (local folders)."""

  data: Path
  tokenizer: Path
  # A URL workdir's tokenizer folder: process 0 publishes the tokenizer there and the other
  # hosts fetch it, since no host reads another's disk.
  published: Any = None


def folders(config, workdir, *, local_dir=None, process_index: int = 0,
            process_count: int = 1) -> Folders:
  """The run's folders: under a local workdir; for a URL workdir (gs://, s3://), under
  `local_dir`, this host's own folder for it (`storage.local_dir(workdir)`), in one
  subfolder per process. `data.data_dir` and `data.tokenizer_dir` win over both (a
  tokenizer of one's own is read where it is, and not published)."""
  if not storage.is_url(workdir):
    workdir = Path(workdir)
    return Folders(data=Path(config.data_dir or workdir / 'data'),
                   tokenizer=Path(config.tokenizer_dir or workdir / 'tokenizer'))
  if local_dir is None:
    raise ValueError(f'{workdir} is a URL: give local_dir, where this host keeps its '
                     'tokenizer and token store (storage.local_dir(workdir))')
  local = Path(local_dir)
  if process_count > 1:
    local = local / f'process-{process_index}'
  data = Path(config.data_dir) if config.data_dir else local / 'data'
  if config.tokenizer_dir:
    return Folders(data=data, tokenizer=Path(config.tokenizer_dir))
  return Folders(data=data, tokenizer=local / 'tokenizer',
                 published=storage.path(workdir) / 'tokenizer')


@dataclasses.dataclass
class Prepared:
  """A run's data before batching: the source, the tokenizer and every split tokenized."""

  source: Any
  columns: tuple[str, ...]
  splits: tuple[str, ...]
  tokenizer: Tokenizer
  tokens: dict[str, dict[str, Any]]    # split -> column -> `store.Ragged`


def _shared_tokenizer(config, source, columns, where: Folders, windows: bool, seed: int, *,
                      process_index: int, barrier: Callable[[str], None]) -> Tokenizer:
  """The run's tokenizer on every process: process 0 makes it (and publishes it to a URL
  workdir) while the others wait, then they load it (fetched from the workdir)."""
  published = where.published
  if process_index == 0:
    # The workdir's own tokenizer wins over the cache's; none there: the cache's goes too
    # (left by an earlier run under this URL, whose folder was since deleted).
    if published is not None and not storage.download_tree(published, where.tokenizer):
      shutil.rmtree(where.tokenizer, ignore_errors=True)
    tokenizer = _make_tokenizer(config, source, columns, where.tokenizer, windows, seed)
    if published is not None and where.tokenizer.is_dir():
      storage.upload_tree(where.tokenizer, published)
  barrier('transformer: tokenizer ready')
  if process_index != 0:
    if published is not None:
      storage.download_tree(published, where.tokenizer)
    tokenizer = _make_tokenizer(config, source, columns, where.tokenizer, windows, seed)
  return tokenizer


def prepare(config, needs: Needs, where: Folders, *, seed: int, process_index: int = 0,
            barrier: Callable[[str], None] = lambda name: None) -> Prepared:
  """Opens the source, makes (or reopens) the tokenizer and tokenizes every split into the
  token store. Process 0 makes the tokenizer and the store first; the others wait at
  `barrier`, then open them (with a URL workdir: fetch the tokenizer, build their own
  store)."""
  if config.overlong not in ('drop', 'truncate'):
    raise ConfigError(f"data.overlong must be 'drop' or 'truncate', got {config.overlong!r}")
  source = _open_source(config, needs, where.data, seed)
  columns = _columns(source, needs)
  splits = tuple(s for s in SPLITS if s in source.splits)
  if 'train' not in splits:
    raise DataError('The data source has no train split.')
  tokenizer = _shared_tokenizer(config, source, columns, where, needs.windows, seed,
                                process_index=process_index, barrier=barrier)
  if isinstance(source, sources_lib.InMemory):   # small and generated: no store on disk
    store = store_lib.in_memory(source, splits, tokenizer, columns)
  else:
    directory = _store_directory(where.data, source, columns, needs.windows)
    if process_index == 0 or where.published is not None:   # a URL workdir: each its own
      key = {'source': source.fingerprint,
             'tokenizer': _tokenizer_fingerprint(tokenizer, where.tokenizer),
             'columns': list(columns), 'format': store_lib.FORMAT}
      store_lib.open_or_build(source, splits, where.tokenizer, directory, key=key,
                              num_workers=config.num_workers, columns=columns,
                              log=logging.warning)
    barrier('transformer: token store ready')
    store = store_lib.TokenStore.open(directory)
  return Prepared(source=source, columns=columns, splits=splits, tokenizer=tokenizer,
                  tokens=store.splits)


def make_batches(prepared: Prepared, config, needs: Needs, *, global_batch_size: int,
                 seed: int, eval_batch_size: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> Datasets:
  """The training stream (packed examples or character windows) and the padded evaluation
  batches of this process's shard, read from the prepared token store."""
  eval_batch_size = eval_batch_size or global_batch_size
  for name, size in (('global_batch_size', global_batch_size),
                     ('eval_batch_size', eval_batch_size)):
    if size % process_count:
      raise ConfigError(f'{name} {size} is not divisible by process_count {process_count}.')
  tokens, tokenizer, columns = prepared.tokens, prepared.tokenizer, prepared.columns
  rows = global_batch_size // process_count
  shards = dict(process_index=process_index, process_count=process_count)
  memo: dict[str, Any] = {}

  if needs.windows:
    max_len = needs.sequences['inputs'].length
    streams = {s: t['text'].flat for s, t in tokens.items()}
    train_windows = WindowSource(streams['train'], max_len)

    def train_fn():
      return window_train_dataset(train_windows, rows=rows, seed=seed,
                                  num_epochs=config.num_epochs, **shards)

    def eval_fn(split):
      if split not in memo:
        memo[split] = window_eval_arrays(np.asarray(streams[split]), max_len)
      return EvalBatches(memo[split], global_batch_size=eval_batch_size, **shards)
    info = {'train_tokens': len(streams['train'])}
  else:
    specials = Specials.of(tokenizer)
    train_examples = Examples(tokens['train'], needs, truncate=config.overlong == 'truncate',
                              specials=specials)
    if len(train_examples) == 0:
      lengths = {k: s.length for k, s in needs.sequences.items()}
      raise DataError(f'No training example fits the row lengths {lengths} '
                      f'(data.overlong={config.overlong!r}).')

    def train_fn():
      return train_dataset(train_examples, needs, rows=rows, seed=seed, pack=config.pack,
                           num_epochs=config.num_epochs, tokenizer=tokenizer, **shards)

    def eval_fn(split):
      if split not in memo:
        examples = Examples(tokens[split], needs, truncate=True, specials=specials)
        memo[split] = eval_arrays(examples, needs, seed=seed, tokenizer=tokenizer)
      return EvalBatches(memo[split], global_batch_size=eval_batch_size, **shards)
    train_count = len(tokens['train'][columns[0]])
    info = {'train_examples': len(train_examples),
            'train_dropped': train_count - len(train_examples)}

  def texts_fn(split):
    if ('texts', split) not in memo:
      memo['texts', split] = prepared.source.read_split(split)
    return {k: list(memo['texts', split][k]) for k in columns}

  return Datasets(tokenizer=tokenizer, splits=prepared.splits, _train_fn=train_fn,
                  _eval_fn=eval_fn, _texts_fn=texts_fn, info=info)


def get_datasets(config, needs: Needs, *, workdir, global_batch_size: int, seed: int,
                 eval_batch_size: int | None = None, local_dir=None,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 barrier: Callable[[str], None] | None = None) -> Datasets:
  """`folders`, `prepare` and `make_batches` together: the tokenizer and the data a task
  needs, built in (or reopened from) ``workdir``.

  Args:
    config: the ``data`` ConfigDict (fields in `transformer/data/config.py`).
    needs: what the task reads (`Task.data_needs(config)`).
    workdir: where the tokenizer and the token store go (see `folders`).
    local_dir: for a URL workdir, this host's folder for them (`storage.local_dir`).
    global_batch_size: rows per global batch; each process gets
      ``global_batch_size // process_count`` of them.
    seed: seeds the shuffle, the MLM masks, the synthetic data and the tokenizer sample.
    eval_batch_size: rows per global evaluation batch (default: ``global_batch_size``);
      evaluation has no gradients, so it can take bigger batches than training.
    process_index, process_count: this process's shard (default: from jax).
    barrier: `barrier(name)` returns when every process has called it (default: JAX's
      `sync_global_devices` when there are several processes).
  """
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  shards = dict(process_index=process_index, process_count=process_count)
  where = folders(config, workdir, local_dir=local_dir, **shards)
  prepared = prepare(config, needs, where, seed=seed, process_index=process_index,
                     barrier=barrier or _default_barrier(process_count))
  return make_batches(prepared, config, needs, global_batch_size=global_batch_size,
                      seed=seed, eval_batch_size=eval_batch_size, **shards)
