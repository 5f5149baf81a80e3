"""Input pipelines: sources -> tokenizers -> Grain batches, behind ``get_datasets``.

The trainer calls::

    ds = get_datasets(cfg.data, task='translation', workdir=workdir,
                      global_batch_size=128, seed=0)
    it = ds.train_iter()            # checkpointable: it.get_state() / it.set_state(s)
    batch = next(it)                # this process's rows of the global batch
    for batch in ds.eval_batches('valid'): ...
    sources, references = ds.eval_texts('valid')   # translation, for BLEU

Config fields (``data_config``, attribute access; a missing field takes its default;
``default_data_config()`` returns them all):

Source
  source ('synthetic')        'synthetic' | 'text' | 'parallel' | 'tfds'.
  synthetic_task ('reverse')  'copy' | 'reverse' | 'sort' of random symbol strings.
  synthetic_vocab (10)        number of symbols (<= 62), printed '0'-'9', 'a'-'z', 'A'-'Z';
                              the token ids are 5 specials + these symbols.
  synthetic_min_len (4), synthetic_max_len (16)   lengths of the random strings.
  synthetic_train_size (50_000), synthetic_eval_size (1_000)   examples in train and in
                              each of valid/test; every split is a deterministic function
                              of ``seed`` (train, valid and test use different streams).
  path (None)                 'text': a UTF-8 text file; 'parallel': a folder holding
                              ``{train,valid,test}.{src_lang,tgt_lang}`` (valid may also be
                              named validation/val/dev; train is required).
  src_lang (None), tgt_lang (None)   'parallel': file suffixes (default 'src' / 'tgt');
                              'tfds' translation: feature keys (default: the builder's
                              supervised keys, e.g. de -> en for wmt14_translate/de-en).
  reverse_translation (False) swap source and target (wmt14_translate/de-en -> en->de).
  valid_fraction (0.1)        'text': the last fraction of the characters is 'valid'
                              (nanoGPT's 90/10 split).
  tfds_name (None)            a TFDS catalog name, e.g. 'wmt14_translate/de-en', 'lm1b',
                              'tiny_shakespeare', 'glue/sst2'; prepared with
                              download_and_prepare(file_format='array_record').
  tfds_data_dir (None)        where TFDS data lives (default: ``data_dir``).
  tfds_text_key (None)        text feature for lm/mlm/classification (default: the first
                              of 'text', 'sentence', 'content').
  tfds_label_key ('label')    label feature for classification.
  data_dir (None)             cache for the prepared ArrayRecord files of local corpora and
                              the token-id cache (default: ``workdir/data``).

Tokenizer
  tokenizer ('synthetic')     'synthetic' | 'char' | 'sentencepiece'.
  tokenizer_dir (None)        where the tokenizer is saved / loaded (default:
                              ``workdir/tokenizer``); SentencePiece is trained on the train
                              split (source + target for translation: one shared
                              vocabulary) when no model is there yet.
  vocab_size (8000)           SentencePiece vocabulary size (a soft limit on small corpora).
  spm_model_type ('unigram')  'unigram' | 'bpe'.

Sequences and batches
  max_len (64)                row length of every feature (for the LM: the block size).
  max_source_len (None), max_target_len (None)   translation overrides of max_len.
  lm_format ('auto')          'windows': nanoGPT random windows over the token stream
                              (no specials, no packing); 'sentences': each line / record is
                              bos+text -> text+eos, packed. 'auto': windows for
                              tokenizer='char', else sentences.
  pack (True)                 training rows pack several examples (first fit) with
                              segmentation/position features; False: one example per row.
                              Classification is never packed.
  overlong ('drop')           training examples longer than a row: 'drop' | 'truncate'.
                              Evaluation always truncates, so it covers every example.
  num_epochs (None)           None repeats the training data forever; an int stops after
                              that many epochs (the last batch is filled with zero rows).
  mlm_probability (0.15)      fraction of tokens selected for MLM prediction (80/10/10).

Batch keys (NumPy; ids int32, weights float32; B = global_batch_size // process_count):
  translation  inputs [B,S] (source + eos), decoder_inputs [B,T] (bos + target),
               targets [B,T] (target + eos), weights [B,T]; packed training batches also
               inputs_segmentation, inputs_position, targets_segmentation,
               targets_position (decoder_inputs share the targets').
  lm           inputs [B,T], targets [B,T] (next tokens), weights [B,T]; packed sentence
               batches also inputs_segmentation, inputs_position (targets share them).
  mlm          inputs [B,T] (masked), targets [B,T] (original), weights [B,T] (1 only at
               positions selected for prediction); packed: inputs_segmentation/_position.
  classification  inputs [B,T] (bos + text + eos), label [B], weights [B] (0 on padding rows).
Segmentation is 1, 2, 3... per example in a row and 0 on padding; position restarts at 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import ml_collections
import numpy as np

from transformer.data import sources as sources_lib
from transformer.data.mlm import mask_tokens
from transformer.data.pipeline import (
    TASKS, EvalBatches, Examples, Ragged, WindowSource, build_examples, eval_arrays,
    train_dataset, window_eval_arrays, window_train_dataset,
)
from transformer.data.tokenizers import (
    NUM_SPECIALS, CharTokenizer, SentencePieceTokenizer, Tokenizer, encode_many,
    load_tokenizer, synthetic_tokenizer,
)

__all__ = [
    'Datasets', 'get_datasets', 'default_data_config', 'CharTokenizer',
    'SentencePieceTokenizer', 'load_tokenizer', 'synthetic_tokenizer', 'mask_tokens',
]


def default_data_config() -> ml_collections.ConfigDict:
  """Every field ``get_datasets`` reads, with its default (see the module docstring)."""
  return ml_collections.ConfigDict(dict(
      source='synthetic',
      synthetic_task='reverse',
      synthetic_vocab=10,
      synthetic_min_len=4,
      synthetic_max_len=16,
      synthetic_train_size=50_000,
      synthetic_eval_size=1_000,
      path=None,
      src_lang=None,
      tgt_lang=None,
      reverse_translation=False,
      valid_fraction=0.1,
      tfds_name=None,
      tfds_data_dir=None,
      tfds_text_key=None,
      tfds_label_key='label',
      data_dir=None,
      tokenizer='synthetic',
      tokenizer_dir=None,
      vocab_size=8000,
      spm_model_type='unigram',
      max_len=64,
      max_source_len=None,
      max_target_len=None,
      lm_format='auto',
      pack=True,
      overlong='drop',
      num_epochs=None,
      mlm_probability=0.15,
  ))


_DEFAULTS = default_data_config().to_dict()


def _get(config, name: str) -> Any:
  value = config.get(name, _DEFAULTS[name]) if hasattr(config, 'get') else getattr(config, name, _DEFAULTS[name])
  return value


@dataclasses.dataclass
class Datasets:
  """What the trainer needs: tokenizer, vocabulary size, train and eval data."""

  task: str
  tokenizer: Tokenizer
  vocab_size: int
  splits: tuple[str, ...]
  global_batch_size: int
  process_index: int
  process_count: int
  _train_fn: Callable[[], Any]
  _eval_fn: Callable[[str], EvalBatches]
  _texts_fn: Callable[[str], tuple[list[str], list[str]]] | None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def source_tokenizer(self) -> Tokenizer:
    return self.tokenizer

  @property
  def target_tokenizer(self) -> Tokenizer:
    return self.tokenizer

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  def train_iter(self):
    """A fresh Grain iterator of training batches (``get_state``/``set_state``)."""
    return iter(self._train_fn())

  def eval_batches(self, split: str = 'valid') -> EvalBatches:
    """Every example of ``split`` once, in order, padded; re-iterable and finite."""
    self._check_split(split)
    return self._eval_fn(split)

  def eval_texts(self, split: str = 'valid') -> tuple[list[str], list[str]]:
    """Raw (sources, references) of a translation split, in eval-batch order."""
    if self._texts_fn is None:
      raise ValueError(f'eval_texts is only for translation, not {self.task!r}.')
    self._check_split(split)
    return self._texts_fn(split)

  def _check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f'No split {split!r}; this dataset has {self.splits}.')


# ----------------------------------------------------------------------------


def _load_columns(config, task: str, data_dir: Path, seed: int) -> tuple[Callable[[], dict], str]:
  """(a loader of ``{split: columns}``, a fingerprint of the source)."""
  source = _get(config, 'source')
  if source == 'synthetic':
    kw = dict(num_symbols=_get(config, 'synthetic_vocab'), min_len=_get(config, 'synthetic_min_len'),
              max_len=_get(config, 'synthetic_max_len'))
    sizes = {'train': _get(config, 'synthetic_train_size'), 'valid': _get(config, 'synthetic_eval_size'),
             'test': _get(config, 'synthetic_eval_size')}
    def load():
      return {split: sources_lib.synthetic_pairs(_get(config, 'synthetic_task'), num_examples=n,
                                                 seed=[seed, k], **kw)
              for k, (split, n) in enumerate(sizes.items())}
    return load, ''  # no token cache: generating is as fast as reading
  if source == 'text':
    path = _get(config, 'path')
    if not path:
      raise ValueError("source='text' needs data.path (a text file).")
    return sources_lib.local_text_source(path, valid_fraction=_get(config, 'valid_fraction'),
                                         data_dir=data_dir)
  if source == 'parallel':
    path = _get(config, 'path')
    if not path:
      raise ValueError("source='parallel' needs data.path (a corpus folder).")
    return sources_lib.local_parallel_source(
        path, src=_get(config, 'src_lang') or 'src', tgt=_get(config, 'tgt_lang') or 'tgt',
        data_dir=data_dir)
  if source == 'tfds':
    name = _get(config, 'tfds_name')
    if not name:
      raise ValueError("source='tfds' needs data.tfds_name.")
    columns, key = sources_lib.tfds_source(
        name, task=task, data_dir=str(_get(config, 'tfds_data_dir') or data_dir),
        src_lang=_get(config, 'src_lang'), tgt_lang=_get(config, 'tgt_lang'),
        reverse_translation=_get(config, 'reverse_translation'),
        text_key=_get(config, 'tfds_text_key'), label_key=_get(config, 'tfds_label_key'))
    return lambda: columns, key
  raise ValueError(f"data.source must be 'synthetic', 'text', 'parallel' or 'tfds', got {source!r}")


def _task_texts(columns: dict, task: str, windows: bool) -> dict[str, list[str]]:
  """Maps raw columns to the text fields the task tokenizes."""
  if task == 'translation':
    if 'source' not in columns:
      raise ValueError('task=translation needs a parallel source (synthetic, parallel or tfds).')
    return {'source': columns['source'], 'target': columns['target']}
  texts = columns['text'] if 'text' in columns else columns['target']
  if windows:
    return {'text': [''.join(texts)]}
  texts = [t.rstrip('\n') for t in texts]
  out = {'text': texts}
  if task == 'classification':
    if 'label' not in columns:
      raise ValueError('task=classification needs a labelled source (tfds with a label).')
    out['label'] = columns['label']
  elif texts:
    out['text'] = [t for t in texts if t]
  return out


def _tokenizer_fingerprint(tokenizer) -> str:
  if isinstance(tokenizer, SentencePieceTokenizer):
    payload = tokenizer.model_path.read_bytes()
  else:
    payload = json.dumps([tokenizer.chars, tokenizer.specials]).encode()
  return hashlib.sha256(payload).hexdigest()[:12]


def _make_tokenizer(config, task_texts: Callable[[], dict], tokenizer_dir: Path, windows: bool):
  kind = _get(config, 'tokenizer')
  if kind == 'synthetic':
    return synthetic_tokenizer(_get(config, 'synthetic_vocab'))
  if kind == 'char':
    if (tokenizer_dir / 'tokenizer.json').is_file():
      tok = load_tokenizer(tokenizer_dir)
      if isinstance(tok, CharTokenizer) and tok.specials == (not windows):
        return tok
    # Like nanoGPT: the vocabulary is every character of every split.
    chars = set()
    for split in task_texts().values():
      for column, texts in split.items():
        if column != 'label':
          for t in texts:
            chars.update(t)
    tok = CharTokenizer(chars, specials=not windows)
    tok.save(tokenizer_dir)
    return tok
  if kind == 'sentencepiece':
    def train_texts():
      split = task_texts()['train']
      return [t for column, texts in split.items() if column != 'label' for t in texts]
    tok = SentencePieceTokenizer.load_or_train(
        tokenizer_dir / 'spm.model', train_texts, vocab_size=_get(config, 'vocab_size'),
        model_type=_get(config, 'spm_model_type'))
    tok.save(tokenizer_dir)
    return tok
  raise ValueError(f"data.tokenizer must be 'synthetic', 'char' or 'sentencepiece', got {kind!r}")


def _tokenize(tokenizer, split_texts: dict) -> dict[str, Any]:
  out = {}
  for column, values in split_texts.items():
    out[column] = np.asarray(values, np.int32) if column == 'label' else Ragged.from_lists(
        list(encode_many(tokenizer, values)))
  return out


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


def get_datasets(
    data_config,
    *,
    task: str,
    workdir,
    global_batch_size: int,
    seed: int,
    eval_batch_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Datasets:
  """Builds (or reloads from ``workdir``) the tokenizer and the data of ``task``.

  Args:
    data_config: the ``data`` ConfigDict (fields in the module docstring).
    task: 'translation' | 'lm' | 'mlm' | 'classification'.
    workdir: where the tokenizer and the data caches go (see ``data_dir``,
      ``tokenizer_dir``).
    global_batch_size: rows per global batch; each process gets
      ``global_batch_size // process_count`` of them.
    seed: seeds the shuffle, the MLM masks and the synthetic data.
    eval_batch_size: rows per global evaluation batch (default: ``global_batch_size``);
      evaluation has no gradients, so it can take bigger batches than training.
    process_index, process_count: this process's shard (default: from jax).
  """
  if task not in TASKS:
    raise ValueError(f'task must be one of {TASKS}, got {task!r}')
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  eval_batch_size = eval_batch_size or global_batch_size
  for name, size in (('global_batch_size', global_batch_size),
                     ('eval_batch_size', eval_batch_size)):
    if size % process_count:
      raise ValueError(f'{name} {size} is not divisible by process_count {process_count}.')
  overlong = _get(config := data_config, 'overlong')
  if overlong not in ('drop', 'truncate'):
    raise ValueError(f"data.overlong must be 'drop' or 'truncate', got {overlong!r}")
  workdir = Path(workdir)
  data_dir = Path(_get(config, 'data_dir') or workdir / 'data')
  tokenizer_dir = Path(_get(config, 'tokenizer_dir') or workdir / 'tokenizer')
  lm_format = _get(config, 'lm_format')
  if lm_format == 'auto':
    lm_format = 'windows' if _get(config, 'tokenizer') == 'char' else 'sentences'
  windows = task == 'lm' and lm_format == 'windows'

  load_columns, source_key = _load_columns(config, task, data_dir, seed)
  memo: dict[str, Any] = {}

  def columns() -> dict:
    if 'columns' not in memo:
      memo['columns'] = load_columns()
    return memo['columns']

  def task_texts() -> dict:
    if 'texts' not in memo:
      memo['texts'] = {s: _task_texts(c, task, windows) for s, c in columns().items()}
    return memo['texts']

  tokenizer = _make_tokenizer(config, task_texts, tokenizer_dir, windows)
  cache = None
  if source_key:
    key = hashlib.sha256(f'{source_key}|{_tokenizer_fingerprint(tokenizer)}|{task}|{windows}'.encode())
    cache = data_dir / 'tokens' / f'{key.hexdigest()[:16]}.npz'
  if cache is not None and cache.is_file():
    tokens = _load_tokens(cache)
  else:
    tokens = {s: _tokenize(tokenizer, t) for s, t in task_texts().items()}
    if cache is not None:
      _save_tokens(cache, tokens)
  if 'train' not in tokens:
    raise ValueError('The data source has no train split.')
  splits = tuple(s for s in ('train', 'valid', 'test') if s in tokens)

  max_len = _get(config, 'max_len')
  if task == 'translation':
    max_lengths = {'inputs': _get(config, 'max_source_len') or max_len,
                   'targets': _get(config, 'max_target_len') or max_len}
  elif task == 'lm':
    max_lengths = {'inputs': max_len, 'targets': max_len}
  elif task == 'mlm':
    max_lengths = {'tokens': max_len}
  else:
    max_lengths = {'inputs': max_len}
  mask_kwargs = dict(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                     first_real_id=NUM_SPECIALS, mlm_probability=_get(config, 'mlm_probability'))
  if task == 'mlm' and tokenizer.mask_id is None:
    raise ValueError('task=mlm needs a tokenizer with a mask id.')
  rows = global_batch_size // process_count
  num_epochs = _get(config, 'num_epochs')

  if windows:
    streams = {s: t['text'][0] if len(t['text']) else np.zeros(0, np.int32) for s, t in tokens.items()}
    train_windows = WindowSource(streams['train'], max_len)

    def train_fn():
      return window_train_dataset(train_windows, rows=rows, seed=seed, num_epochs=num_epochs,
                                  process_index=process_index, process_count=process_count)

    def eval_fn(split):
      if split not in memo.setdefault('eval', {}):
        memo['eval'][split] = window_eval_arrays(streams[split], max_len)
      return EvalBatches(memo['eval'][split], global_batch_size=eval_batch_size,
                         process_index=process_index, process_count=process_count)
    info = {'train_tokens': len(streams['train'])}
  else:
    train_examples, _ = build_examples(task, tokens['train'], max_lengths=max_lengths,
                                       truncate=overlong == 'truncate')
    if len(train_examples) == 0:
      raise ValueError(f'No training example fits max_len={max_lengths} (overlong={overlong!r}).')

    def train_fn():
      return train_dataset(task, train_examples, max_lengths=max_lengths, rows=rows, seed=seed,
                           pack=_get(config, 'pack'), num_epochs=num_epochs,
                           process_index=process_index, process_count=process_count,
                           mask_kwargs=mask_kwargs)

    def eval_fn(split):
      if split not in memo.setdefault('eval', {}):
        examples, _ = build_examples(task, tokens[split], max_lengths=max_lengths, truncate=True)
        memo['eval'][split] = eval_arrays(task, examples, max_lengths=max_lengths, seed=seed,
                                          mask_kwargs=mask_kwargs)
      return EvalBatches(memo['eval'][split], global_batch_size=eval_batch_size,
                         process_index=process_index, process_count=process_count)
    info = {'train_examples': len(train_examples),
            'train_dropped': len(next(iter(tokens['train'].values()))) - len(train_examples)}

  texts_fn = None
  if task == 'translation':
    def texts_fn(split):
      c = columns()[split]
      return list(c['source']), list(c['target'])

  return Datasets(task=task, tokenizer=tokenizer, vocab_size=tokenizer.vocab_size, splits=splits,
                  global_batch_size=global_batch_size, process_index=process_index,
                  process_count=process_count, _train_fn=train_fn, _eval_fn=eval_fn,
                  _texts_fn=texts_fn, info=info)
