"""Each kind of bad data fails with a clear message."""

import pytest

from tests.helpers import task_datasets
from transformer.data.tokenizers import CharTokenizer, SentencePieceTokenizer
from transformer.data.config import default_data_config


def _get(tmp_path, **fields):
  c = default_data_config()
  for k, v in fields.items():
    setattr(c, k, v)
  task = 'translation' if c.source == 'parallel' else 'lm'
  return task_datasets(c, task, workdir=tmp_path / 'work', global_batch_size=2, seed=0,
                       process_index=0, process_count=1)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.txt'):
    _get(tmp_path, source='text', path=str(tmp_path / 'nope.txt'), tokenizer='char')


def test_missing_parallel_side(tmp_path):
  (tmp_path / 'train.en').write_text('a\n')
  with pytest.raises(FileNotFoundError, match=r'train\.de'):
    _get(tmp_path, source='parallel', path=str(tmp_path), src_lang='en', tgt_lang='de',
         tokenizer='char')


def test_empty_file(tmp_path):
  (tmp_path / 'empty.txt').write_text('')
  with pytest.raises(ValueError, match='empty.*empty.txt'):
    _get(tmp_path, source='text', path=str(tmp_path / 'empty.txt'), tokenizer='char')


def test_parallel_line_counts_differ(tmp_path):
  (tmp_path / 'train.en').write_text('a\nb\nc\n')
  (tmp_path / 'train.de').write_text('x\ny\n')
  with pytest.raises(ValueError) as e:
    _get(tmp_path, source='parallel', path=str(tmp_path), src_lang='en', tgt_lang='de',
         tokenizer='char')
  message = str(e.value)
  assert 'train.en' in message and 'train.de' in message
  assert '3 lines' in message and '2 lines' in message


def test_undecodable_bytes_name_file_and_line(tmp_path):
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(b'fine\nalso fine\nbroken \xff\xfe here\n')
  with pytest.raises(ValueError, match=r'bad\.txt.*line 3'):
    _get(tmp_path, source='text', path=str(bad), tokenizer='char')


def test_sentencepiece_vocab_too_small(tmp_path):
  texts = ['abcdefghij klmnop'] * 10
  with pytest.raises(ValueError, match='vocab_size=100 is too small.*17 distinct'):
    SentencePieceTokenizer.train(texts, tmp_path / 'm.model', vocab_size=100)


def test_char_vocabulary_misses_characters():
  tok = CharTokenizer('abc')
  with pytest.raises(ValueError, match="misses characters.*'z'"):
    tok.encode('abz')


def test_bad_config_values(tmp_path):
  with pytest.raises(ValueError, match='overlong'):
    _get(tmp_path, overlong='wrap')
  with pytest.raises(ValueError, match='synthetic_rule'):
    c = default_data_config()
    c.synthetic_rule = 'shuffle'
    task_datasets(c, 'translation', workdir=tmp_path, global_batch_size=2, seed=0,
                  process_index=0, process_count=1)
  with pytest.raises(ValueError, match='divisible'):
    task_datasets(default_data_config(), 'translation', workdir=tmp_path,
                  global_batch_size=3, seed=0, process_index=0, process_count=2)


def test_a_restore_error_reads_as_one_clean_line():
  from transformer.errors import typed_line
  error = Exception('Encountered error while reading array index: (slice(0, 128, 1),). See '
                    'full TensorStore details: <bound method pybind11_detail_function_record_'
                    'v1_system_libstdcpp_gxx_ab\nmore')
  assert typed_line(error) == ('Exception: Encountered error while reading array index: '
                               '(slice(0, 128, 1),)')
  assert typed_line(ValueError()) == 'ValueError'
