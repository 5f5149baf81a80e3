"""Several hosts (processes on this machine, jax.distributed on localhost), each with its
own HOME and working directory and sharing nothing but a bucket on a real GCS server
(fake-gcs-server, `tests/cloud.py`): issue 27's "Done when" end to end, and a SLURM step
found through its environment.

The pod test trains configs/shakespeare_char.py (a tiny model, its own pmap over two CPU
devices per host) from `gs://BUCKET/data/input.txt` into `gs://BUCKET/run`: SIGTERM to one
host stops both at the same step (exit 0), kill -9 of one host after a checkpoint ends the
other in one line within the bound, and the twice-resumed run ends bitwise where an
uninterrupted two-host run does. `python -m pytest -q tests/train/test_hosts.py`.
"""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import SHAKESPEARE, require
from tests.helpers import (REPO, checkpoint_steps, finish, flag_args, multi_process_env,
                           tiny_overrides)
from transformer import storage
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


class Pod:
  """Two train.py hosts of one run: each its own HOME (hence its own ~/.cache), working
  directory and TMPDIR, sharing only the bucket (the environment's GCS variables)."""

  def __init__(self, root, bucket: str):
    self.bucket = bucket
    self.homes = [root / f'host{i}' for i in range(2)]
    for home in self.homes:
      for folder in ('work', 'tmp'):
        (home / folder).mkdir(parents=True)

  def start(self, run: str, overrides: dict) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for i, home in enumerate(self.homes):
      flags = {**overrides, 'data.path': f'{self.bucket}/data/input.txt',
               'distributed.num_processes': 2, 'distributed.process_id': i,
               'distributed.coordinator_address': f'localhost:{port}'}
      env = multi_process_env({'HOME': str(home), 'TMPDIR': str(home / 'tmp')})
      # The host's own compilation cache (train.py's default, ~/.cache/transformer/xla),
      # not the tests' shared one: nothing of the run outside the bucket and ~/.cache.
      env.pop('JAX_COMPILATION_CACHE_DIR', None)
      env.pop('TRANSFORMER_CACHE', None)
      procs.append(subprocess.Popen(
          [sys.executable, str(REPO / 'train.py'),
           f'--config={REPO / "configs" / "shakespeare_char.py"}',
           f'--workdir={self.bucket}/{run}', *flag_args(flags)],
          cwd=home / 'work', env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          text=True))
    return procs

  def run(self, run: str, overrides: dict) -> list[tuple[int, str, str]]:
    results = finish(self.start(run, overrides))
    for rc, _, stderr in results:
      assert rc == 0, stderr[-3000:]
    return results

  def committed_steps(self, run: str) -> list[int]:
    """The steps whose checkpoint is complete in the bucket (Orbax's commit marker)."""
    import fsspec
    url = f'{self.bucket}/{run}/checkpoints'
    storage.path(url)   # (quiets gcsfs's warning about the bucket's type)
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    found = fs.glob(f'{root}/*/commit_success.txt')
    return sorted(int(f.split('/')[-2]) for f in found if f.split('/')[-2].isdigit())

  def wait_for_checkpoint(self, run: str, after: int, procs) -> int:
    """The first committed step > `after` (while both hosts are still training)."""
    def ready():
      assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
      return any(s > after for s in self.committed_steps(run))
    wait_for(ready)
    return min(s for s in self.committed_steps(run) if s > after)


def final_eval_loss(url: str, num_steps: int) -> float:
  records = [r for r in metrics_lib.read_metrics(url) if 'eval/loss' in r]
  assert records[-1]['step'] == num_steps, records[-1]
  return records[-1]['eval/loss']


# configs/shakespeare_char.py shrunk to seconds; its pmap over two CPU devices per host stays.
# A heartbeat timeout of 10 s bounds how long a survivor may wait for a silent host.
POD = {
    'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64, 'model.num_layers': 1,
    'model.max_len': 32, 'data.max_len': 32, 'train.checkpoint_every': 10,
    'train.eval_every': 100_000, 'train.log_every': 5, 'train.eval_batches': 2,
    'train.steps_per_call': 1, 'train.num_examples_to_show': 0,
    'distributed.heartbeat_timeout_seconds': 10,
}


def test_two_hosts_sharing_only_a_bucket_are_preempted_killed_and_resume_exactly(
    gcs_bucket, tmp_path):
  from etils import epath
  (epath.Path(gcs_bucket) / 'data' / 'input.txt').write_bytes(require(SHAKESPEARE).read_bytes())
  pod = Pod(tmp_path, gcs_bucket)
  endless = {**POD, 'train.num_steps': 100_000}   # stopped by a signal, never by its end

  # SIGTERM to host 1 only (a preempted VM): both save the same step and exit 0.
  procs = pod.start('run', endless)
  pod.wait_for_checkpoint('run', 0, procs)
  procs[1].send_signal(signal.SIGTERM)
  results = finish(procs, timeout=120)
  for rc, _, stderr in results:
    assert rc == 0 and 'Traceback' not in stderr, stderr[-3000:]
  preempted = int(results[0][1].split('preempted: checkpoint saved at step')[1].split()[0])
  assert pod.committed_steps('run')[-1] == preempted
  data = json.loads((epath.Path(gcs_bucket) / 'run' / 'checkpoints' / str(preempted) / 'data'
                     / 'metadata').read_text())
  assert len(data['process_states']) == 2   # each host's own data position

  # Resumed, then kill -9 of host 1 after its next checkpoint: host 0 exits 3 well inside
  # the heartbeat bound with one line naming host 1 and the newest checkpoint.
  procs = pod.start('run', endless)
  pod.wait_for_checkpoint('run', preempted, procs)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.time()
  stdout, stderr = procs[0].communicate(timeout=120)
  took = time.time() - killed
  procs[1].communicate()
  assert procs[0].returncode == 3, stderr[-3000:]
  assert took < 30, took
  assert f'resuming from step {preempted} of 100000' in stdout, stdout[-3000:]
  assert 'Traceback' not in stderr and 'Fatal Python error' not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith(('error:', 'stopped:'))]
  assert len(lines) == 1 and 'process 0 of 2 lost contact with process 1' in lines[0], stderr
  newest = pod.committed_steps('run')[-1]
  assert newest > preempted
  assert f'The newest checkpoint is step {newest} in {gcs_bucket}/run/checkpoints' in lines[0]
  # The survivor gave the workdir's lease back on its way out (no wait to resume).
  assert not (epath.Path(gcs_bucket) / 'run' / '.lock').exists(), stderr[-3000:]

  # Both hosts again: the run resumes from there to its end ...
  num_steps = newest + 5
  resumed = pod.run('run', {**POD, 'train.num_steps': num_steps})
  assert f'resuming from step {newest} of {num_steps}' in resumed[0][1]
  # ... and ends bitwise where an uninterrupted two-host run does.
  pod.run('straight', {**POD, 'train.num_steps': num_steps})
  assert (final_eval_loss(f'{gcs_bucket}/run', num_steps)
          == final_eval_loss(f'{gcs_bucket}/straight', num_steps))

  # Nothing of either run outside the bucket and each host's ~/.cache.
  for home in pod.homes:
    assert sorted(p.name for p in home.iterdir()) == ['.cache', 'tmp', 'work']
    assert not any((home / 'work').iterdir()) and not any((home / 'tmp').iterdir())
    assert [p.name for p in (home / '.cache').iterdir()] == ['transformer']


def test_a_slurm_step_is_found_through_its_environment(tmp_path):
  """`distributed.auto`: two tasks of a simulated SLURM step on this host find each other
  the way `srun python train.py --config.distributed.auto=True` would start them."""
  port = free_port(range(61440, 65536))   # JAX's coordinator: 61440 + job id % 4096
  slurm = {'SLURM_JOB_ID': str(port - 61440 + 4096 * 7), 'SLURM_STEP_NODELIST': 'localhost',
           'SLURM_STEP_NUM_NODES': '1', 'SLURM_NTASKS': '2', 'SLURM_NNODES': '1'}
  overrides = {**OVERRIDES, 'train.num_steps': 6, 'distributed.auto': True}
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={tmp_path}', *flag_args(overrides)], cwd=REPO,
      env=multi_process_env({**slurm, 'SLURM_PROCID': str(i), 'SLURM_LOCALID': str(i)}),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  results = finish(procs)
  for rc, _, stderr in results:
    assert rc == 0, stderr[-3000:]
  assert 'devices: 2 x cpu in 2 process(es)' in results[0][1]
  assert 'devices:' not in results[1][1]          # process 1 prints nothing of its own
  assert sorted(train_losses(tmp_path)) == list(range(1, 7))
  assert checkpoint_steps(tmp_path) == [5, 6]


def test_a_user_error_on_one_host_ends_every_host_in_one_line(tmp_path):
  """Process 0 alone finds the mistake (it trains the tokenizer while the others wait):
  every process leaves at once with status 2 and one line that says what to change."""
  corpus = tmp_path / 'input.txt'
  corpus.write_text('the cat sat on the mat\n' * 200)
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', f'--config={REPO / "configs" / "shakespeare_char.py"}',
       f'--workdir={tmp_path / "run"}', *flag_args({
           **POD, 'data.path': str(corpus), 'data.tokenizer': 'sentencepiece',
           'data.vocab_size': 100, 'distributed.num_processes': 2,
           'distributed.process_id': i, 'distributed.coordinator_address': f'localhost:{port}'})],
      cwd=REPO, env=multi_process_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  start = time.time()
  results = finish(procs, timeout=120)
  seconds = time.time() - start
  advice = 'SentencePiece vocab_size=100 is too small for this text'
  (rc0, _, err0), (rc1, _, err1) = results
  assert rc0 == 2 and err0.strip().splitlines()[-1].startswith(f'error: {advice}'), err0
  assert rc1 == 2 and err1.strip().splitlines()[-1].startswith(
      f'error: process 0 stopped: {advice}'), err1
  assert 'Traceback' not in err0 + err1
  assert seconds < 30, seconds      # not the heartbeat's 10 s, nor a shutdown's 30 s wait
