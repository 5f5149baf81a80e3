"""``get_datasets``: a data config and what a task needs -> tokenizer and batches.

    ds = get_datasets(config.data, task.data_needs(config.data), workdir=workdir,
                      global_batch_size=128, seed=0)
    it = ds.train_iter()            # checkpointable: it.get_state() / it.set_state(s)
    batch = next(it)                # this process's rows of the global batch
    for batch in ds.eval_batches('valid'): ...
    texts = ds.texts('valid')       # the split's raw columns, in eval-batch order

The steps: open the source (synthetic, a local file or folder, a TFDS catalog dataset);
make the tokenizer (trained on the train split the first time); tokenize every split once
into the token cache; then build the training stream (packed examples or character
windows) and the padded evaluation arrays. Config fields: `transformer/data/config.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from transformer.data import sources as sources_lib
from transformer.errors import ConfigError, DataError
from transformer.data.pipeline import (
    EvalBatches, Needs, Ragged, WindowSource, build_examples, eval_arrays, train_dataset,
    window_eval_arrays, window_train_dataset,
)
from transformer.data.tokenizers import (
    CharTokenizer, SentencePieceTokenizer, Tokenizer, encode_many, load_tokenizer,
    synthetic_tokenizer,
)

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


def _open_source(config, columns: tuple[str, ...], data_dir: Path, seed: int
                 ) -> tuple[Callable[[], dict], str]:
  """(a loader of ``{split: columns}``, a fingerprint of the source; '' = do not cache)."""
  source = config.source
  if source == 'synthetic':
    kw = dict(num_symbols=config.synthetic_vocab, min_len=config.synthetic_min_len,
              max_len=config.synthetic_max_len)
    sizes = {'train': config.synthetic_train_size, 'valid': config.synthetic_eval_size,
             'test': config.synthetic_eval_size}
    if 'label' in columns:
      make = lambda n, s: sources_lib.synthetic_labelled(num_examples=n, seed=s, **kw)
    else:
      make = lambda n, s: sources_lib.synthetic_pairs(config.synthetic_rule, num_examples=n,
                                                      seed=s, **kw)
    def load():
      return {split: make(n, [seed, k]) for k, (split, n) in enumerate(sizes.items())}
    return load, ''  # no token cache: generating is as fast as reading
  if source == 'text':
    if not config.path:
      raise ConfigError("data.source='text' needs data.path (a text file).")
    return sources_lib.local_text_source(config.path, valid_fraction=config.valid_fraction,
                                         data_dir=data_dir)
  if source == 'parallel':
    if not config.path:
      raise ConfigError("data.source='parallel' needs data.path (a corpus folder).")
    return sources_lib.local_parallel_source(
        config.path, src=config.src_lang or 'src', tgt=config.tgt_lang or 'tgt',
        data_dir=data_dir)
  if source == 'tfds':
    if not config.tfds_name:
      raise ConfigError("data.source='tfds' needs data.tfds_name.")
    columns_by_split, key = sources_lib.tfds_source(
        config.tfds_name, columns=columns, data_dir=str(config.tfds_data_dir or data_dir),
        src_lang=config.src_lang, tgt_lang=config.tgt_lang,
        reverse_translation=config.reverse_translation, text_key=config.tfds_text_key,
        label_key=config.tfds_label_key)
    return lambda: columns_by_split, key
  raise ConfigError("data.source must be 'synthetic', 'text', 'parallel' or 'tfds', "
                   f'got {source!r}')


def _needed_columns(columns: dict, needs: Needs) -> dict[str, list]:
  """The columns `needs` reads, from what a source gave (text tasks read a pair's target)."""
  out = {}
  for name in needs.columns:
    if name in columns:
      out[name] = columns[name]
    elif name == 'text' and 'target' in columns:
      out[name] = columns['target']
    else:
      raise ConfigError(f'the task reads a {name!r} column, but this data source has only '
                       f'{sorted(columns)}')
  if 'text' in out:
    if needs.windows:  # one character stream per split, exactly as in the file
      return {'text': [''.join(out['text'])]}
    # Lines keep no newline; language models skip empty ones, labelled rows stay aligned.
    texts = [t.rstrip('\n') for t in out['text']]
    out['text'] = texts if needs.label else [t for t in texts if t]
  return out


def _tokenizer_fingerprint(tokenizer) -> str:
  if isinstance(tokenizer, SentencePieceTokenizer):
    payload = tokenizer.model_path.read_bytes()
  else:
    payload = json.dumps([tokenizer.chars, tokenizer.specials]).encode()
  return hashlib.sha256(payload).hexdigest()[:12]


def _make_tokenizer(config, texts: Callable[[], dict], tokenizer_dir: Path, windows: bool):
  kind = config.tokenizer
  if kind == 'synthetic':
    return synthetic_tokenizer(config.synthetic_vocab)
  if kind == 'char':
    if (tokenizer_dir / 'tokenizer.json').is_file():
      tok = load_tokenizer(tokenizer_dir)
      if isinstance(tok, CharTokenizer) and tok.specials == (not windows):
        return tok
    # Like nanoGPT: the vocabulary is every character of every split.
    chars = set()
    for split in texts().values():
      for column, values in split.items():
        if column != 'label':
          for t in values:
            chars.update(t)
    tok = CharTokenizer(chars, specials=not windows)
    tok.save(tokenizer_dir)
    return tok
  if kind == 'sentencepiece':
    def train_texts():
      split = texts()['train']
      return [t for column, values in split.items() if column != 'label' for t in values]
    tok = SentencePieceTokenizer.load_or_train(
        tokenizer_dir / 'spm.model', train_texts, vocab_size=config.vocab_size,
        model_type=config.spm_model_type)
    tok.save(tokenizer_dir)
    return tok
  raise ConfigError("data.tokenizer must be 'synthetic', 'char' or 'sentencepiece', "
                   f'got {kind!r}')


def _tokenize(tokenizer, columns: dict) -> dict[str, Any]:
  return {column: np.asarray(values, np.int32) if column == 'label' else
          Ragged.from_lists(list(encode_many(tokenizer, values)))
          for column, values in columns.items()}


def _save_tokens(path: Path, tokens: dict[str, dict[str, Any]]) -> None:
  arrays = {}
  for split, columns in tokens.items():
    for column, value in columns.items():
      if isinstance(value, Ragged):
        arrays[f'{split}/{column}/flat'] = value.flat
        arrays[f'{split}/{column}/offsets'] = value.offsets
      else:
        arrays[f'{split}/{column}'] = value
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.npz')
  np.savez(tmp, **arrays)
  tmp.replace(path)


def _load_tokens(path: Path) -> dict[str, dict[str, Any]]:
  tokens: dict[str, dict[str, Any]] = {}
  with np.load(path) as z:
    for name in z.files:
      parts = name.split('/')
      split, column = parts[0], parts[1]
      if len(parts) == 2:
        tokens.setdefault(split, {})[column] = z[name]
      elif parts[2] == 'flat':
        tokens.setdefault(split, {})[column] = Ragged(z[name], z[f'{split}/{column}/offsets'])
  return tokens


def get_datasets(config, needs: Needs, *, workdir, global_batch_size: int, seed: int,
                 eval_batch_size: int | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Datasets:
  """Builds (or reloads from ``workdir``) the tokenizer and the data a task needs.

  Args:
    config: the ``data`` ConfigDict (fields in `transformer/data/config.py`).
    needs: what the task reads (`Task.data_needs(config)`).
    workdir: where the tokenizer and the data caches go (see ``data_dir``,
      ``tokenizer_dir``).
    global_batch_size: rows per global batch; each process gets
      ``global_batch_size // process_count`` of them.
    seed: seeds the shuffle, the MLM masks and the synthetic data.
    eval_batch_size: rows per global evaluation batch (default: ``global_batch_size``);
      evaluation has no gradients, so it can take bigger batches than training.
    process_index, process_count: this process's shard (default: from jax).
  """
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  eval_batch_size = eval_batch_size or global_batch_size
  for name, size in (('global_batch_size', global_batch_size),
                     ('eval_batch_size', eval_batch_size)):
    if size % process_count:
      raise ConfigError(f'{name} {size} is not divisible by process_count {process_count}.')
  if config.overlong not in ('drop', 'truncate'):
    raise ConfigError(f"data.overlong must be 'drop' or 'truncate', got {config.overlong!r}")
  workdir = Path(workdir)
  data_dir = Path(config.data_dir or workdir / 'data')
  tokenizer_dir = Path(config.tokenizer_dir or workdir / 'tokenizer')
  windows = needs.windows

  load_columns, source_key = _open_source(config, needs.columns, data_dir, seed)
  memo: dict[str, Any] = {}

  def texts() -> dict:
    """{split: the columns `needs` reads} (loaded once, when first asked)."""
    if 'texts' not in memo:
      memo['texts'] = {s: _needed_columns(c, needs) for s, c in load_columns().items()}
    return memo['texts']

  tokenizer = _make_tokenizer(config, texts, tokenizer_dir, windows)
  cache = None
  if source_key:
    key = hashlib.sha256(f'{source_key}|{_tokenizer_fingerprint(tokenizer)}|'
                         f'{needs.columns}|{windows}'.encode())
    cache = data_dir / 'tokens' / f'{key.hexdigest()[:16]}.npz'
  if cache is not None and cache.is_file():
    tokens = _load_tokens(cache)
  else:
    tokens = {s: _tokenize(tokenizer, t) for s, t in texts().items()}
    if cache is not None:
      _save_tokens(cache, tokens)
  if 'train' not in tokens:
    raise DataError('The data source has no train split.')
  splits = tuple(s for s in SPLITS if s in tokens)
  rows = global_batch_size // process_count
  shards = dict(process_index=process_index, process_count=process_count)

  if windows:
    max_len = needs.sequences['inputs'].length
    streams = {s: t['text'][0] if len(t['text']) else np.zeros(0, np.int32)
               for s, t in tokens.items()}
    train_windows = WindowSource(streams['train'], max_len)

    def train_fn():
      return window_train_dataset(train_windows, rows=rows, seed=seed,
                                  num_epochs=config.num_epochs, **shards)

    def eval_fn(split):
      if split not in memo.setdefault('eval', {}):
        memo['eval'][split] = window_eval_arrays(streams[split], max_len)
      return EvalBatches(memo['eval'][split], global_batch_size=eval_batch_size, **shards)
    info = {'train_tokens': len(streams['train'])}
  else:
    train_examples, _ = build_examples(tokens['train'], needs,
                                       truncate=config.overlong == 'truncate')
    if len(train_examples) == 0:
      lengths = {k: s.length for k, s in needs.sequences.items()}
      raise DataError(f'No training example fits the row lengths {lengths} '
                       f'(data.overlong={config.overlong!r}).')

    def train_fn():
      return train_dataset(train_examples, needs, rows=rows, seed=seed, pack=config.pack,
                           num_epochs=config.num_epochs, tokenizer=tokenizer, **shards)

    def eval_fn(split):
      if split not in memo.setdefault('eval', {}):
        examples, _ = build_examples(tokens[split], needs, truncate=True)
        memo['eval'][split] = eval_arrays(examples, needs, seed=seed, tokenizer=tokenizer)
      return EvalBatches(memo['eval'][split], global_batch_size=eval_batch_size, **shards)
    train_count = len(tokens['train'][next(iter(needs.sequences.values())).column])
    info = {'train_examples': len(train_examples),
            'train_dropped': train_count - len(train_examples)}

  def texts_fn(split):
    return {k: list(v) for k, v in texts()[split].items()}

  return Datasets(tokenizer=tokenizer, splits=splits, _train_fn=train_fn, _eval_fn=eval_fn,
                  _texts_fn=texts_fn, info=info)
