"""Tokenizer round trips on the real corpora, special ids, save/load."""

import numpy as np
import pytest

from tests.conftest import MULTI30K, SHAKESPEARE, require
from tests.helpers import multi30k_config, task_datasets
from transformer.data.tokenizers import (CharTokenizer, SentencePieceTokenizer, load_tokenizer,
                              synthetic_tokenizer)
from transformer.data import tokenizers as tok_lib


def test_char_vocabulary_of_tiny_shakespeare_is_nanogpts(tmp_path):
  text = require(SHAKESPEARE).read_text()
  tok = CharTokenizer.from_text(text)
  assert tok.vocab_size == 65
  # nanoGPT's shakespeare_char: stoi = {ch: i for i, ch in enumerate(sorted(set(data)))}.
  nanogpt = {ch: i for i, ch in enumerate(sorted(set(text)))}
  assert tok.encode('First Citizen:\n') == [nanogpt[c] for c in 'First Citizen:\n']
  ids = tok.encode(text)
  assert max(ids) == 64 and min(ids) == 0
  assert tok.decode(ids) == text
  tok.save(tmp_path)
  assert load_tokenizer(tmp_path).encode(text[:1000]) == ids[:1000]


def test_char_lm_datasets_use_65_symbols_and_nanogpt_split(tmp_path):
  from transformer.data.config import default_data_config
  require(SHAKESPEARE)
  c = default_data_config()
  c.source, c.path, c.tokenizer, c.max_len = 'text', str(SHAKESPEARE), 'char', 32
  ds = task_datasets(c, 'lm', workdir=tmp_path, global_batch_size=4, seed=0,
                     process_index=0, process_count=1)
  assert ds.vocab_size == 65
  assert ds.info['train_tokens'] == 1_003_854  # nanoGPT's 90% of 1,115,394 characters
  b = next(ds.train_iter())
  assert b['inputs'].shape == (4, 32) and b['inputs'].max() < 65
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])  # next-char targets
  valid = list(ds.eval_batches('valid'))
  assert sum(v['weights'].sum() for v in valid) == 111_540 - 1  # every valid target once


def test_sentencepiece_round_trip_on_multi30k(multi30k_workdir):
  ds = task_datasets(multi30k_config(), 'translation', workdir=multi30k_workdir,
                     global_batch_size=8, seed=0, process_index=0, process_count=1)
  tok = ds.tokenizer
  assert isinstance(tok, SentencePieceTokenizer)
  assert 1000 < tok.vocab_size <= 2000
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
  for side in ('en', 'de'):
    lines = (MULTI30K / f'valid.{side}').read_text(encoding='utf-8').splitlines()
    for line in lines:
      ids = tok.encode(line)
      assert tok.decode(ids) == line
      assert tok.decode(ids + [tok.eos_id, 7, 8]) == line  # stops at eos
    assert tok.encode(lines[0])[0] >= tok_lib.NUM_SPECIALS
  # Unseen characters survive through byte fallback.
  assert tok.decode(tok.encode('Größe — 日本 ☃  two  spaces ')) == 'Größe — 日本 ☃  two  spaces '
  # Saved in the workdir and reloaded (not retrained) next time.
  reloaded = load_tokenizer(multi30k_workdir / 'tokenizer')
  assert reloaded.encode(lines[3]) == tok.encode(lines[3])
  mtime = (multi30k_workdir / 'tokenizer' / 'spm.model').stat().st_mtime_ns
  task_datasets(multi30k_config(), 'translation', workdir=multi30k_workdir,
                global_batch_size=8, seed=0, process_index=0, process_count=1)
  assert (multi30k_workdir / 'tokenizer' / 'spm.model').stat().st_mtime_ns == mtime


@pytest.mark.parametrize('model_type', ['bpe', 'unigram'])
def test_sentencepiece_train_small(tmp_path, model_type):
  texts = [f'the {w} sat on the mat number {i}.' for i, w in enumerate(['cat', 'dog', 'bird'] * 50)]
  tok = SentencePieceTokenizer.train(texts, tmp_path / 'm.model', vocab_size=400, model_type=model_type)
  assert tok.vocab_size <= 400
  assert all(tok.decode(tok.encode(t)) == t for t in texts)


def test_char_tokenizer_with_specials_and_synthetic():
  tok = CharTokenizer('abc', specials=True)
  assert tok.vocab_size == 3 + tok_lib.NUM_SPECIALS
  ids = tok.encode('cab')
  assert ids == [7, 5, 6]
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, 5, tok.pad_id]) == 'cab'
  assert tok.encode('az')[1] == tok.unk_id
  syn = synthetic_tokenizer(10)
  assert syn.vocab_size == 15 and syn.decode(syn.encode('0123456789')) == '0123456789'
  assert syn.encode('0') == [tok_lib.NUM_SPECIALS]
