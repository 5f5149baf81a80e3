"""Tokenizers: SentencePiece (subwords) and characters, behind one small interface.

Every tokenizer exposes::

    encode(text: str) -> list[int]        # no bos/eos added; the pipeline adds them
    decode(ids: Sequence[int]) -> str     # stops at the first eos, drops pad/bos
    vocab_size: int                       # what the model's embedding needs
    pad_id, bos_id, eos_id, unk_id, mask_id: int | None
    save(directory) / load_tokenizer(directory)

Special ids, shared by every tokenizer that has specials::

    pad = 0, bos = 1, eos = 2, unk = 3, mask = 4 (the MLM [MASK] token)

so real symbols start at id 5 (``NUM_SPECIALS``).

The one exception is the plain character vocabulary of a character-level LM
(``CharTokenizer(chars, specials=False)``): ids 0..len(chars)-1 are exactly the
sorted distinct characters of the training text, as in nanoGPT's
``shakespeare_char`` (65 symbols for Tiny Shakespeare, '\\n' = 0), so losses compare
with nanoGPT's 65-way softmax. Such a vocabulary has no bos/eos/unk/mask
(``None``); its ``pad_id`` is 0, which is also the id of the first character: the
LM pipeline only pads rows whose ``weights`` are 0, so the overlap never reaches a
loss.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import sentencepiece as spm

from transformer.errors import ConfigError, DataError

PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIALS = 5
SPECIAL_PIECES = ('<pad>', '<s>', '</s>', '<unk>', '<mask>')
TOKENIZER_JSON = 'tokenizer.json'
SPM_MODEL = 'spm.model'
# Printable symbols for the synthetic tasks: digits first, so a vocabulary of 10
# prints as digit strings.
SYNTHETIC_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None
  unk_id: int | None
  mask_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def save(self, directory: str | os.PathLike) -> None: ...


def _cut_at_eos(ids: Sequence[int], eos_id: int | None) -> list[int]:
  ids = [int(i) for i in ids]
  if eos_id is not None and eos_id in ids:
    ids = ids[: ids.index(eos_id)]
  return ids


class CharTokenizer:
  """A character vocabulary; optionally with the five special ids in front."""

  def __init__(self, chars: Iterable[str], *, specials: bool = False):
    self.chars = ''.join(sorted(set(chars)))
    if not self.chars:
      raise DataError('CharTokenizer needs at least one character.')
    self.specials = specials
    offset = NUM_SPECIALS if specials else 0
    self._stoi = {c: i + offset for i, c in enumerate(self.chars)}
    self.vocab_size = len(self.chars) + offset
    self.pad_id = PAD_ID
    self.bos_id = BOS_ID if specials else None
    self.eos_id = EOS_ID if specials else None
    self.unk_id = UNK_ID if specials else None
    self.mask_id = MASK_ID if specials else None
    self._offset = offset

  @classmethod
  def from_text(cls, text: str, *, specials: bool = False) -> CharTokenizer:
    if not text:
      raise DataError('Cannot build a character vocabulary from empty text.')
    return cls(set(text), specials=specials)

  def encode(self, text: str) -> list[int]:
    stoi = self._stoi
    try:
      return [stoi[c] for c in text]
    except KeyError:
      missing = sorted(set(text) - set(stoi))
      if self.unk_id is not None:
        return [stoi.get(c, self.unk_id) for c in text]
      raise DataError(
          f'Character vocabulary of {len(self.chars)} symbols misses characters '
          f'{missing[:20]!r} ({len(missing)} distinct) found in the text.'
      ) from None

  def decode(self, ids: Sequence[int]) -> str:
    chars, offset = self.chars, self._offset
    if self.specials:
      ids = _cut_at_eos(ids, self.eos_id)
    out = []
    for i in ids:
      i = int(i)
      if self.specials and i < offset:
        if i == self.unk_id:
          out.append('\N{REPLACEMENT CHARACTER}')
        continue  # pad, bos, mask
      if 0 <= i - offset < len(chars):
        out.append(chars[i - offset])
    return ''.join(out)

  def save(self, directory: str | os.PathLike) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {'type': 'char', 'chars': self.chars, 'specials': self.specials}
    (directory / TOKENIZER_JSON).write_text(json.dumps(payload, ensure_ascii=False))

  def __repr__(self) -> str:
    return f'CharTokenizer(vocab_size={self.vocab_size}, specials={self.specials})'


def synthetic_tokenizer(num_symbols: int) -> CharTokenizer:
  """Tokenizer of the synthetic tasks: specials 0..4, then ``num_symbols`` symbols
  printed as '0'-'9', 'a'-'z', 'A'-'Z' (so up to 62 symbols)."""
  if not 1 <= num_symbols <= len(SYNTHETIC_ALPHABET):
    raise ConfigError(
        f'data.synthetic_vocab must be in [1, {len(SYNTHETIC_ALPHABET)}], got {num_symbols}.'
    )
  return CharTokenizer(SYNTHETIC_ALPHABET[:num_symbols], specials=True)


class SentencePieceTokenizer:
  """A SentencePiece model with pad=0, bos=1, eos=2, unk=3 and '<mask>'=4."""

  def __init__(self, model_path: str | os.PathLike):
    self.model_path = Path(model_path)
    if not self.model_path.is_file():
      raise FileNotFoundError(f'SentencePiece model not found: {self.model_path}')
    self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    self.mask_id = MASK_ID
    if (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id()) != (
        PAD_ID, BOS_ID, EOS_ID, UNK_ID,
    ) or self._sp.id_to_piece(MASK_ID) != '<mask>':
      raise ValueError(f'{self.model_path} does not use the special ids {SPECIAL_PIECES}.')

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      model_path: str | os.PathLike,
      *,
      vocab_size: int,
      model_type: str = 'unigram',
      max_sentences: int = 2_000_000,
      num_threads: int = 2,
  ) -> SentencePieceTokenizer:
    """Trains on ``texts`` (an in-memory list of sentences: a bounded sample of a large
    corpus) with ``num_threads`` threads and saves the model."""
    texts = [t for t in texts if t]
    if not texts:
      raise DataError('Cannot train SentencePiece on an empty corpus.')
    distinct = len(set(''.join(texts)))
    # byte_fallback reserves 256 byte pieces; character_coverage=1.0 keeps every
    # character as a piece of its own.
    needed = NUM_SPECIALS + 256 + distinct
    if vocab_size < needed:
      raise ConfigError(
          f'SentencePiece vocab_size={vocab_size} is too small for this text: it has '
          f'{distinct} distinct characters, which with {NUM_SPECIALS} specials and 256 '
          f'byte-fallback pieces need vocab_size >= {needed} (set data.vocab_size).'
      )
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = model_path.with_name(model_path.stem + f'.tmp{os.getpid()}')
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(tmp_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        hard_vocab_limit=False,
        byte_fallback=True,
        normalization_rule_name='identity',
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=1.0,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=1 << 16,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        pad_piece='<pad>', bos_piece='<s>', eos_piece='</s>', unk_piece='<unk>',
        user_defined_symbols=['<mask>'],
        num_threads=num_threads,
        minloglevel=2,
    )
    # Rename at the end, so a crashed run never leaves a half-written model.
    os.replace(f'{tmp_prefix}.model', model_path)
    os.remove(f'{tmp_prefix}.vocab')
    return cls(model_path)

  @classmethod
  def load_or_train(
      cls,
      model_path: str | os.PathLike,
      texts_fn,
      *,
      vocab_size: int,
      model_type: str = 'unigram',
      num_threads: int = 2,
  ) -> SentencePieceTokenizer:
    """Loads ``model_path`` if it exists, else trains it on ``texts_fn()``."""
    if Path(model_path).is_file():
      return cls(model_path)
    return cls.train(texts_fn(), model_path, vocab_size=vocab_size, model_type=model_type,
                     num_threads=num_threads)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # One thread: the token store runs one worker process per core instead.
    return self._sp.encode(list(texts), num_threads=1)

  def decode(self, ids: Sequence[int]) -> str:
    ids = [i for i in _cut_at_eos(ids, self.eos_id) if i not in (PAD_ID, BOS_ID, MASK_ID)]
    return self._sp.decode(ids)

  def save(self, directory: str | os.PathLike) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / SPM_MODEL).resolve() != self.model_path.resolve():
      shutil.copyfile(self.model_path, directory / SPM_MODEL)
    (directory / TOKENIZER_JSON).write_text(json.dumps({'type': 'sentencepiece', 'model': SPM_MODEL}))

  def __repr__(self) -> str:
    return f'SentencePieceTokenizer({self.model_path}, vocab_size={self.vocab_size})'


def load_tokenizer(directory: str | os.PathLike) -> CharTokenizer | SentencePieceTokenizer:
  """Loads a tokenizer written by ``tokenizer.save(directory)``."""
  directory = Path(directory)
  meta_path = directory / TOKENIZER_JSON
  if not meta_path.is_file():
    raise FileNotFoundError(f'No {TOKENIZER_JSON} in {directory}')
  meta = json.loads(meta_path.read_text())
  if meta['type'] == 'char':
    return CharTokenizer(meta['chars'], specials=meta['specials'])
  if meta['type'] == 'sentencepiece':
    return SentencePieceTokenizer(directory / meta['model'])
  if meta['type'] in ('huggingface', 'marian'):   # imported checkpoints' own tokenizers
    from transformer.data import pretrained_tokenizers
    return pretrained_tokenizers.load(directory, meta)
  raise ValueError(f'Unknown tokenizer type {meta["type"]!r} in {meta_path}')


def encode_many(tokenizer, texts: Sequence[str]) -> Iterator[list[int]]:
  """Encodes many texts, in one native call where the tokenizer has one."""
  if hasattr(tokenizer, 'encode_batch'):
    return iter(tokenizer.encode_batch(texts))
  return (tokenizer.encode(t) for t in texts)
