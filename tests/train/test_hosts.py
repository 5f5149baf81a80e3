"""Several hosts (processes on this machine, jax.distributed on localhost): exact resume
with every process's data position, SIGTERM on one host stops all of them at the same
step, a host killed with -9 ends the others' run in one line, and a SLURM step found
through its environment."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, checkpoint_steps, flag_args, tiny_overrides
from transformer.train import metrics as metrics_lib

pytestmark = pytest.mark.slow

OVERRIDES = {**tiny_overrides(), 'train.checkpoint_every': 5, 'train.max_to_keep': 2}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def host_env(extra: dict | None = None) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS='--xla_cpu_collective_call_terminate_timeout_seconds=600')
  env.update(extra or {})
  return env


def start_hosts(workdir, overrides: dict, count: int = 2) -> list[subprocess.Popen]:
  """`count` train.py processes of one run into `workdir`."""
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={workdir}', *flag_args(
          {**overrides, 'distributed.num_processes': count, 'distributed.process_id': i,
           'distributed.coordinator_address': f'localhost:{port}'})],
      cwd=REPO, env=host_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(count)]


def finish(procs, timeout: float = 300) -> list[tuple[int, str, str]]:
  results = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, stdout, stderr))
  return results


def run_hosts(workdir, overrides: dict) -> list[tuple[int, str, str]]:
  results = finish(start_hosts(workdir, overrides))
  for rc, _, stderr in results:
    assert rc == 0, stderr[-3000:]
  return results


def train_losses(workdir) -> dict[int, float]:
  """step -> train/loss of metrics.jsonl (a resumed run's records replace the older)."""
  return {r['step']: r['train/loss'] for r in metrics_lib.read_metrics(workdir)
          if 'train/loss' in r}


def wait_for(condition, timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    time.sleep(0.1)
  raise AssertionError('timed out')


def has_checkpoint(workdir) -> bool:
  folder = workdir / 'checkpoints'
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def test_sigterm_on_one_host_saves_the_same_step_everywhere_and_resumes_exactly(tmp_path):
  """SIGTERM to process 1 only: both exit 0 after saving one step (with each process's
  own data position); the resumed run's losses equal an uninterrupted two-process run's
  bitwise."""
  workdir = tmp_path / 'run'
  overrides = {**OVERRIDES, 'train.num_steps': 100_000}
  procs = start_hosts(workdir, overrides)
  wait_for(lambda: has_checkpoint(workdir) or any(p.poll() is not None for p in procs))
  procs[1].send_signal(signal.SIGTERM)
  results = finish(procs, timeout=120)
  for rc, _, stderr in results:
    assert rc == 0, stderr[-3000:]
  saved = int(results[0][1].split('preempted: checkpoint saved at step')[1].split()[0])
  assert checkpoint_steps(workdir)[-1] == saved > 5
  data = json.loads((workdir / 'checkpoints' / str(saved) / 'data' / 'metadata').read_text())
  positions = [s['next_index'] for s in data['process_states']]
  assert len(positions) == 2 and positions[0] != positions[1]   # packed shards differ

  overrides['train.num_steps'] = saved + 6
  resumed = run_hosts(workdir, overrides)
  assert f'resuming from step {saved} of {saved + 6}' in resumed[0][1]
  run_hosts(tmp_path / 'straight', overrides)
  losses, reference = train_losses(workdir), train_losses(tmp_path / 'straight')
  assert sorted(losses) == list(range(1, saved + 7))
  assert losses == reference                               # bitwise: floats compared equal
