"""BLEU, checkpoint averaging and the translate / generate / evaluate command line."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer import inference
from transformer.train.trained_run import load_run

from tests.helpers import REPO, tiny_overrides, train_py


def cli(*args, stdin=''):
  return subprocess.run([sys.executable, '-m', 'transformer', *args], cwd=REPO, input=stdin,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def translation_workdir(tmp_path_factory):
  """The tiny reversal model, trained until it reverses every held-out string (600 steps,
  checkpoints at 400 and 600 kept)."""
  workdir = tmp_path_factory.mktemp('reverse')
  overrides = {**tiny_overrides(), 'train.num_steps': 600, 'train.checkpoint_every': 200,
               'train.eval_every': 600, 'model.d_model': 64, 'model.mlp_dim': 128,
               'train.steps_per_call': 10, 'train.log_every': 50, 'optim.learning_rate': 5e-3,
               'optim.warmup_steps': 30, 'optim.decay_steps': 600}
  result = train_py(workdir, overrides, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_translate_evaluate_and_average_round_trip(translation_workdir):
  workdir = str(translation_workdir)
  sources = ['12345', '908172', '5566']
  result = cli('translate', '--workdir', workdir, '--beam_size', '4',
               stdin='\n'.join(sources) + '\n')
  assert result.returncode == 0, result.stderr[-3000:]
  outputs = result.stdout.splitlines()
  assert outputs == [s[::-1] for s in sources]      # the default task reverses its input
  run = load_run(translation_workdir)
  assert outputs == inference.translate_texts(run.model, run.params, run.tokenizer, sources,
                                              beam_size=4)
  greedy = cli('translate', '--workdir', workdir, '--beam_size', '1',
               stdin='\n'.join(sources) + '\n')
  assert greedy.returncode == 0 and greedy.stdout.splitlines() == outputs

  result = cli('evaluate', '--workdir', workdir, '--split', 'test', '--average_last', '2')
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout[result.stdout.index('{'):])
  assert metrics['checkpoint_steps'] == [400, 600]
  # The average of steps 400 and 600, not the model that reverses every string.
  assert metrics['test/accuracy'] > 0.98 and metrics['test/exact_match'] > 0.9
  # One-word digit strings: no 4-grams, so BLEU would read 0; the decoded outputs' exact
  # match is reported instead.
  assert 'test/bleu' not in metrics and metrics['test/decoded_exact_match'] > 0.9


@pytest.mark.slow
def test_average_of_checkpoints_is_their_mean(translation_workdir):
  newest = load_run(translation_workdir)
  older = load_run(translation_workdir, step=400)
  average = load_run(translation_workdir, average_last=2)
  assert newest.steps == [600] and average.steps == [400, 600]
  for a, b, m in zip(jax.tree.leaves(newest.params), jax.tree.leaves(older.params),
                     jax.tree.leaves(average.params)):
    np.testing.assert_allclose(m, (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6, atol=1e-7)


def test_clear_errors(tmp_path):
  result = cli('translate', '--workdir', str(tmp_path / 'nothing'), stdin='hello\n')
  assert result.returncode == 2 and 'no checkpoint' in result.stderr
  assert not (tmp_path / 'nothing').exists()


@pytest.mark.slow
def test_empty_input_is_an_error(translation_workdir):
  result = cli('translate', '--workdir', str(translation_workdir), stdin='\n\n')
  assert result.returncode == 2 and 'no input' in result.stderr


@pytest.mark.slow
def test_cli_input_problems_are_named(translation_workdir):
  workdir = str(translation_workdir)
  # Undecodable bytes: the line is named.
  bad = subprocess.run([sys.executable, '-m', 'transformer', 'translate', '--workdir', workdir],
                       cwd=REPO, input=b'123\n45\xff6\n', capture_output=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.decode().strip() .startswith('error: stdin line 2 is not valid UTF-8')
  # A line longer than max_len=16 tokens: a warning naming it, then its first 15 tokens.
  long_line = '1234567890' * 3
  result = cli('translate', '--workdir', workdir, stdin=f'12\n{long_line}\n')
  assert result.returncode == 0
  assert 'warning: stdin line 2 is 31 tokens; the model reads 16' in result.stderr
  assert len(result.stdout.splitlines()) == 2
  strict = cli('translate', '--workdir', workdir, '--strict', stdin=f'12\n{long_line}\n')
  assert strict.returncode == 2 and 'error: stdin line 2 is 31 tokens' in strict.stderr
  # Averaging more checkpoints than there are says how many it used.
  result = cli('evaluate', '--workdir', workdir, '--average_last', '50')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'averaged those (steps 400, 600)' in result.stderr


@pytest.fixture(scope='module')
def lm_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('charlm')
  text = workdir / 'text.txt'
  text.write_text('abcabcabd\n' * 400)
  overrides = {
      'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64, 'model.num_layers': 1,
      'model.max_len': 16, 'data.path': str(text), 'data.max_len': 16,
      'train.num_steps': 60, 'train.batch_size': 8, 'train.eval_every': 60,
      'train.checkpoint_every': 60, 'train.num_examples_to_show': 1, 'train.eval_batches': 2,
  }
  result = train_py(workdir, overrides, config='configs/shakespeare_char.py', timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'sample:' in result.stdout
  return workdir


@pytest.mark.slow
def test_generate_round_trip_and_errors(lm_workdir):
  result = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc',
               '--max_new_tokens', '40', '--temperature', '0')
  assert result.returncode == 0, result.stderr[-3000:]
  text = result.stdout.rstrip('\n')
  assert text.startswith('abc') and len(text) == 3 + 40   # no eos in a char LM: all 40
  again = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc',
              '--max_new_tokens', '40', '--temperature', '0.8', '--seed', '3')
  same = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc',
             '--max_new_tokens', '40', '--temperature', '0.8', '--seed', '3')
  assert again.stdout == same.stdout
  # A prompt longer than the context: a warning, and the newest tokens are read ...
  too_long = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc' * 10,
                 '--max_new_tokens', '5', '--temperature', '0')
  assert too_long.returncode == 0, too_long.stderr[-2000:]
  assert 'warning: the prompt is 30 tokens; the model reads 16 (max_len)' in too_long.stderr
  assert too_long.stdout.startswith('abc' * 10) and len(too_long.stdout.strip()) == 35
  # ... or, with --strict, an error in one line.
  strict = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc' * 10, '--strict')
  assert strict.returncode == 2 and strict.stderr.strip().startswith('error: the prompt is 30')
  assert len(strict.stderr.strip().splitlines()) == 1
  wrong_model = cli('translate', '--workdir', str(lm_workdir), stdin='abc\n')
  assert wrong_model.returncode == 2 and 'DecoderLM' in wrong_model.stderr
  evaluated = cli('evaluate', '--workdir', str(lm_workdir))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.loads(evaluated.stdout[evaluated.stdout.index('{'):])
  # 5 characters; a unigram model scores exp(H) = 4.5, the sequence is predictable: ~1.
  assert metrics['eval/perplexity'] < 2.0 and 'eval/bleu' not in metrics


@pytest.mark.slow
def test_translate_names_the_characters_the_vocabulary_lacks(translation_workdir):
  workdir = str(translation_workdir)
  result = cli('translate', '--workdir', workdir, '--beam_size', '1', stdin='12 34\n5566\n')
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(result.stdout.splitlines()) == 2
  assert ("warning: stdin: 1 distinct character(s) the tokenizer cannot represent (' ') in 1 "
          'of 2 lines') in result.stderr
  strict = cli('translate', '--workdir', workdir, '--strict', stdin='hello world\n')
  assert strict.returncode == 2 and strict.stdout == ''
  assert strict.stderr.strip().splitlines()[-1].startswith(
      "error: stdin: 8 distinct character(s) the tokenizer cannot represent (' ', 'd'")
