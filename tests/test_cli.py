"""BLEU, checkpoint averaging and the translate / generate / evaluate command line."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import sacrebleu

from transformer import inference
from transformer.train import metrics as metrics_lib
from transformer.train.run import load_run

from tests.helpers import REPO, flag_args, tiny_overrides


def test_bleu_of_a_reference_against_itself_is_100():
  refs = ['the cat sat on the mat .', 'a man is riding a red bicycle down the street .']
  assert metrics_lib.corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_bleu_matches_sacrebleu_on_a_known_example():
  hyps = ['the cat is on the mat', 'there is a cat on the mat']
  refs = ['the cat sat on the mat', 'a cat is on the mat']
  expected = sacrebleu.corpus_bleu(hyps, [refs]).score
  assert metrics_lib.corpus_bleu(hyps, refs) == pytest.approx(expected)
  assert 0 < expected < 100
  with pytest.raises(ValueError, match='hypotheses'):
    metrics_lib.corpus_bleu(hyps, refs[:1])


def cli(*args, stdin=''):
  return subprocess.run([sys.executable, '-m', 'transformer', *args], cwd=REPO, input=stdin,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def translation_workdir(tmp_path_factory):
  """The tiny reversal model, trained for 300 steps with checkpoints at 200 and 300."""
  workdir = tmp_path_factory.mktemp('reverse')
  overrides = {**tiny_overrides(), 'train.num_steps': 300, 'train.checkpoint_every': 100,
               'train.eval_every': 300, 'model.d_model': 64, 'model.mlp_dim': 128}
  result = subprocess.run([sys.executable, 'train.py', f'--workdir={workdir}',
                           *flag_args(overrides)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
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
  run = load_run(translation_workdir)
  assert outputs == inference.translate_texts(run.model, run.params, run.tokenizer, sources,
                                              beam_size=4)
  assert all(set(o) <= set('0123456789') for o in outputs) and any(outputs)
  greedy = cli('translate', '--workdir', workdir, '--beam_size', '1',
               stdin='\n'.join(sources) + '\n')
  assert greedy.returncode == 0 and len(greedy.stdout.splitlines()) == 3

  result = cli('evaluate', '--workdir', workdir, '--split', 'test', '--average_last', '2')
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads(result.stdout[result.stdout.index('{'):])
  assert metrics['checkpoint_steps'] == [200, 300]
  assert metrics['test/accuracy'] > 0.5 and 'test/bleu' in metrics


@pytest.mark.slow
def test_average_of_checkpoints_is_their_mean(translation_workdir):
  newest = load_run(translation_workdir)
  older = load_run(translation_workdir, step=200)
  average = load_run(translation_workdir, average_last=2)
  assert newest.steps == [300] and average.steps == [200, 300]
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
  result = subprocess.run([sys.executable, 'train.py', '--config=configs/shakespeare_char.py',
                           f'--workdir={workdir}', *flag_args(overrides)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
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
  too_long = cli('generate', '--workdir', str(lm_workdir), '--prompt', 'abc' * 10)
  assert too_long.returncode == 2 and 'max_len=16' in too_long.stderr
  wrong_model = cli('translate', '--workdir', str(lm_workdir), stdin='abc\n')
  assert wrong_model.returncode == 2 and 'DecoderLM' in wrong_model.stderr
  evaluated = cli('evaluate', '--workdir', str(lm_workdir))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.loads(evaluated.stdout[evaluated.stdout.index('{'):])
  assert metrics['eval/perplexity'] < 65 and 'eval/bleu' not in metrics
