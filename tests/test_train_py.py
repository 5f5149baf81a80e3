"""train.py's answers to user errors: one line, exit status 2, the workdir untouched."""

import subprocess
import sys

import pytest

from tests.helpers import REPO, tiny_overrides, train_py

pytestmark = pytest.mark.slow


def one_error_line(result) -> str:
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  return lines[0]


def test_user_errors_are_one_line_and_write_nothing(tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  (corpus / 'train.en').write_text('a\nb\nc\n')
  (corpus / 'train.de').write_text('x\ny\n')
  cases = {
      'train.num_step': ({'train.num_step': 3}, "unknown config field train.num_step; did "
                         "you mean 'num_steps'?"),
      'heads': ({'model.num_heads': 3}, 'd_model=32 is not divisible by num_heads=3'),
      'batch': ({'train.batch_size': 15, 'cpu_devices': 2},
                'train.batch_size=15 does not split over the 2 batch shards'),
      'missing corpus': ({'data.source': 'parallel', 'data.path': str(tmp_path / 'nope')},
                         'Parallel corpus folder not found'),
      'misaligned corpus': ({'data.source': 'parallel', 'data.path': str(corpus),
                             'data.src_lang': 'en', 'data.tgt_lang': 'de',
                             'data.tokenizer': 'char'},
                            'Parallel corpus sides differ in length'),
  }
  for name, (changes, expected) in cases.items():
    workdir = tmp_path / name.replace(' ', '_')
    line = one_error_line(train_py(workdir, {**tiny_overrides(), **changes}))
    assert expected in line, (name, line)
    assert not workdir.exists(), name     # nothing written, not even the folder
  missing = subprocess.run([sys.executable, 'train.py', '--config=configs/nope.py'], cwd=REPO,
                           capture_output=True, text=True)
  assert 'cannot load the config file configs/nope.py' in one_error_line(missing)
  debug = train_py(tmp_path / 'debug', {**tiny_overrides(), 'model.num_heads': 3},
                   extra_args=['--debug'])
  assert debug.returncode == 2 and 'Traceback' in debug.stderr   # --debug shows it
