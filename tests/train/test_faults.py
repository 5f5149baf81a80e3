"""Fault injection: kill -9, a damaged checkpoint, two trainers at once, a changed model.

Each case checks what a user relies on: the run ends where an uninterrupted run ends,
nothing good is deleted, and what the user reads is one line.
"""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.helpers import (REPO, checkpoint_steps, flag_args, tiny_overrides, train_py)
from transformer.train import metrics as metrics_lib
from transformer.train.trained_run import load_run

pytestmark = pytest.mark.slow

STEPS = 40
OVERRIDES = {**tiny_overrides(), 'train.num_steps': STEPS, 'train.checkpoint_every': 5,
             'train.eval_every': 20, 'train.max_to_keep': 2}


def params_of(workdir):
  return jax.tree.leaves(load_run(workdir).params)


def assert_same_params(a, b):
  for x, y in zip(params_of(a), params_of(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def one_line(stderr: str) -> str:
  """The user-facing part of stderr: exactly one 'error:' line and no traceback."""
  assert 'Traceback' not in stderr, stderr[-2000:]
  lines = [line for line in stderr.splitlines() if line.startswith(('error:', 'stopped:'))]
  assert len(lines) == 1, stderr[-2000:]
  return lines[0]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  result = train_py(workdir, OVERRIDES)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


def start(workdir, overrides=OVERRIDES):
  return subprocess.Popen([sys.executable, 'train.py', f'--workdir={workdir}',
                           *flag_args(overrides)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    time.sleep(0.02)
  return False


def saving(workdir) -> bool:
  """A checkpoint is being written: Orbax's temporary folder exists."""
  folder = workdir / 'checkpoints'
  return folder.is_dir() and any('tmp' in p.name for p in folder.iterdir())


def logged_steps(workdir) -> int:
  path = workdir / 'metrics.jsonl'
  return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_at_any_moment_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
  """Killed while starting, while training and while saving a checkpoint; each restart
  resumes, and the last one ends exactly where the uninterrupted run does, each step
  logged once."""
  workdir = tmp_path / 'run'
  moments = [lambda: (workdir / '.lock').exists(),          # starting up
             lambda: logged_steps(workdir) >= 8,            # training, past a checkpoint
             lambda: saving(workdir)]                       # in the middle of a save
  for moment in moments:
    process = start(workdir)
    hit = wait_for(lambda: moment() or process.poll() is not None)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert hit
  result = train_py(workdir, OVERRIDES)
  assert result.returncode == 0, result.stderr[-2000:]
  assert checkpoint_steps(workdir)[-1] == STEPS
  assert_same_params(workdir, uninterrupted)
  train = [r['step'] for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]
  assert train == sorted(set(train)) and train[-1] == STEPS   # no step logged twice


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, uninterrupted):
  workdir = tmp_path / 'run'
  half = {**OVERRIDES, 'train.num_steps': 20}
  assert train_py(workdir, half).returncode == 0
  assert checkpoint_steps(workdir) == [15, 20]
  files = [p for p in (workdir / 'checkpoints' / '20' / 'state').rglob('*') if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])   # truncated

  evaluated = subprocess.run([sys.executable, '-m', 'transformer', 'evaluate', '--workdir',
                              str(workdir)], cwd=REPO, capture_output=True, text=True)
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert 'checkpoint 20' in evaluated.stderr and 'does not restore' in evaluated.stderr
  assert json.loads(evaluated.stdout[evaluated.stdout.index('{'):])['checkpoint_steps'] == [15]

  result = train_py(workdir, OVERRIDES)
  assert result.returncode == 0, result.stderr[-2000:]
  report = [line for line in result.stdout.splitlines() if 'does not restore' in line]
  assert len(report) == 1 and report[0].startswith('checkpoint 20 does not restore')
  assert '<bound method' not in report[0] and 'TensorStore details' not in report[0], report
  assert 'resuming from step 15 of 40' in result.stdout
  moved = list((workdir / 'checkpoints_damaged').iterdir())
  assert len(moved) == 1 and moved[0].name.startswith('20-')   # kept, not deleted
  assert_same_params(workdir, uninterrupted)


def test_a_second_trainer_on_the_same_workdir_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  first = start(workdir, {**OVERRIDES, 'train.num_steps': 100_000})
  try:
    assert wait_for(lambda: logged_steps(workdir) >= 2)
    second = train_py(workdir, OVERRIDES)
    assert second.returncode == 2
    line = one_line(second.stderr)
    assert 'is in use by PID' in line and str(first.pid) in line
    assert first.poll() is None      # the first one trains on
  finally:
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
  assert first.returncode == 0
  # A lock left by a killed trainer does not block the next one.
  killed = start(workdir, {**OVERRIDES, 'train.num_steps': 100_000})
  assert wait_for(lambda: logged_steps(workdir) >= 4)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert train_py(workdir, {**OVERRIDES, 'train.num_steps': 5}).returncode == 0


def test_resuming_with_a_different_model_touches_nothing(tmp_path):
  workdir = tmp_path / 'run'
  assert train_py(workdir, {**OVERRIDES, 'train.num_steps': 10}).returncode == 0
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  result = train_py(workdir, {**OVERRIDES, 'model.d_model': 64, 'model.num_layers': 2})
  assert result.returncode == 2
  line = one_line(result.stderr)
  assert 'model.d_model: 32 -> 64' in line and 'model.num_layers: 1 -> 2' in line
  after = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  assert after == before      # config.json, metrics, checkpoints: all as they were
