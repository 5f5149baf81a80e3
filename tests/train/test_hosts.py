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

import pytest

from tests.helpers import REPO, checkpoint_steps, flag_args, tiny_overrides
from transformer.train import metrics as metrics_lib

pytestmark = pytest.mark.slow

OVERRIDES = {**tiny_overrides(), 'train.checkpoint_every': 5, 'train.max_to_keep': 2}


def free_port(candidates=(0,)) -> int:
  """A port nothing listens on (0: the system's choice, else the first free candidate)."""
  for candidate in candidates:
    with socket.socket() as s:
      try:
        s.bind(('localhost', candidate))
      except OSError:
        continue
      return s.getsockname()[1]
  raise AssertionError('no free port')


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
  assert checkpoint_steps(workdir)[-1] == saved >= 5
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


def test_a_host_killed_ends_the_others_run_in_one_line_and_the_workdir_resumes(tmp_path):
  """kill -9 of process 1 after a checkpoint: process 0 exits 3 well within the bound,
  with one line naming process 1 and the newest checkpoint (no traceback, no native
  abort in jax.distributed.shutdown); both processes then resume from that checkpoint."""
  workdir = tmp_path / 'run'
  overrides = {**OVERRIDES, 'train.num_steps': 100_000,
               'distributed.heartbeat_timeout_seconds': 10,
               'distributed.shutdown_timeout_seconds': 5}
  procs = start_hosts(workdir, overrides)
  wait_for(lambda: has_checkpoint(workdir) or any(p.poll() is not None for p in procs))
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  stdout, stderr = procs[0].communicate(timeout=120)
  took = time.time() - killed
  procs[1].wait()
  assert procs[0].returncode == 3, stderr[-3000:]
  assert took < 30                           # well inside heartbeat + shutdown timeouts
  assert 'Traceback' not in stderr and 'Fatal Python error' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith(('error:', 'stopped:'))]
  assert len(lines) == 1, stderr[-3000:]
  newest = checkpoint_steps(workdir)[-1]
  assert 'lost contact with process 1' in lines[0]
  assert f'The newest checkpoint is step {newest} in ' in lines[0]

  overrides['train.num_steps'] = newest + 3
  resumed = run_hosts(workdir, overrides)
  assert f'resuming from step {newest} of {newest + 3}' in resumed[0][1]
  assert checkpoint_steps(workdir)[-1] == newest + 3


def test_a_slurm_step_is_found_through_its_environment(tmp_path):
  """`distributed.auto`: two tasks of a simulated SLURM step on this host find each other
  the way `srun python train.py --config.distributed.auto=True` would start them."""
  port = free_port(range(61440, 65536))   # JAX's coordinator: 61440 + job id % 4096
  slurm = {'SLURM_JOB_ID': str(port - 61440 + 4096 * 7), 'SLURM_STEP_NODELIST': 'localhost',
           'SLURM_STEP_NUM_NODES': '1', 'SLURM_NTASKS': '2', 'SLURM_NNODES': '1'}
  overrides = {**OVERRIDES, 'train.num_steps': 6, 'distributed.auto': True}
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={tmp_path}', *flag_args(overrides)], cwd=REPO,
      env=host_env({**slurm, 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i)}),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  results = finish(procs)
  for rc, _, stderr in results:
    assert rc == 0, stderr[-3000:]
  assert 'devices: 2 x cpu in 2 process(es)' in results[0][1]
  assert 'devices:' not in results[1][1]          # process 1 prints nothing of its own
  assert sorted(train_losses(tmp_path)) == list(range(1, 7))
  assert checkpoint_steps(tmp_path) == [5, 6]
