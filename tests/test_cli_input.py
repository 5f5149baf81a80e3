"""`python -m transformer`'s answers to input and options it cannot use: characters the
tokenizer lacks (a warning naming them, `--strict` an error), options out of range (one
line), an imported run's next command."""

import subprocess
import sys

import pytest

from transformer import __main__ as cli_main
from transformer.data.tokenizers import CharTokenizer, synthetic_tokenizer
from transformer.errors import UserError

from tests.helpers import REPO


def cli(*args, stdin=''):
  return subprocess.run([sys.executable, '-m', 'transformer', *args], cwd=REPO, input=stdin,
                        capture_output=True, text=True, timeout=300)


def test_characters_the_tokenizer_lacks_are_named(capsys):
  digits = synthetic_tokenizer(10)
  lines = ['12 34', '567', 'hello world']
  assert cli_main._unrepresentable(digits, lines, 'stdin', strict=False) == lines
  warning = capsys.readouterr().err.strip()
  assert warning.startswith('warning: stdin: 8 distinct character(s) the tokenizer cannot '
                            "represent (' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w') in 2 of 3 "
                            'lines; they become the unknown token'), warning
  with pytest.raises(UserError, match=r"^the prompt: 1 distinct character\(s\) .*\(' '\) \(without"):
    cli_main._unrepresentable(digits, ['12 34'], 'the prompt', strict=True)
  assert cli_main._unrepresentable(digits, ['1234', '5'], 'stdin', strict=False) == [
      '1234', '5']
  assert capsys.readouterr().err == ''             # nothing to say: nothing said
  # A vocabulary without an unknown id cannot encode them: they are dropped, and said so.
  chars = CharTokenizer('abc ')
  assert cli_main._unrepresentable(chars, ['ab!c?'], 'the prompt', strict=False) == ['abc']
  assert "('!', '?')" in capsys.readouterr().err and 'dropped'


@pytest.mark.parametrize('args, message', [
    (['translate', '--beam_size', '0'], '--beam_size 0: must be at least 1'),
    (['translate', '--batch_size', '-3'], '--batch_size -3: must be at least 1'),
    (['generate', '--prompt', 'x', '--max_new_tokens', '-1'],
     '--max_new_tokens -1: must be at least 1'),
    (['generate', '--prompt', 'x', '--top_p', '1.5'], '--top_p 1.5: must be in (0, 1]'),
    (['evaluate', '--average_last', '0'], '--average_last 0: must be at least 1'),
])
def test_options_out_of_range_are_one_line(args, message, tmp_path):
  result = cli(*args[:1], '--workdir', str(tmp_path / 'never_read'), *args[1:])
  assert result.returncode == 2 and result.stderr == f'error: {message}\n', result.stderr
  assert not (tmp_path / 'never_read').exists()


def test_data_fields_for_evaluate():
  from transformer.train.defaults import base_config
  config = base_config()
  cli_main._set_data_fields(config, ['source=text', 'path=corpus.txt', 'max_len=32',
                                     'tokenizer_dir=7'])
  assert (config.data.source, config.data.path, config.data.max_len) == (
      'text', 'corpus.txt', 32)
  assert config.data.tokenizer_dir == '7'          # a string field keeps the text
  with pytest.raises(UserError, match='expected FIELD=VALUE with a config.data field'):
    cli_main._set_data_fields(config, ['pathh=x'])
  with pytest.raises(UserError, match='--data max_len=long'):
    cli_main._set_data_fields(config, ['max_len=long'])


@pytest.mark.slow
def test_an_imported_run_says_what_to_run_next_and_what_evaluate_needs(tmp_path):
  fixtures = REPO / 'tests' / 'fixtures' / 'hf'
  marian = tmp_path / 'marian'
  result = cli('import', '--hf', str(fixtures / 'marian'), '--workdir', str(marian))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'| python -m transformer translate --workdir {marian}`' in result.stdout
  assert 'generate' not in result.stdout
  evaluated = cli('evaluate', '--workdir', str(marian))
  assert evaluated.returncode == 2 and 'Traceback' not in evaluated.stderr
  line = evaluated.stderr.strip().splitlines()[-1]
  assert line.startswith(f'error: {marian} has no evaluation data') and (
      'set config.data.source' in line and 'config.data.path' in line), line
  assert '--data source=text --data path=FILE' in line
  llama = tmp_path / 'llama'
  result = cli('import', '--hf', str(fixtures / 'llama'), '--workdir', str(llama))
  assert f'python -m transformer generate --workdir {llama} --prompt' in result.stdout
