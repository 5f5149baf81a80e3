"""End to end: train.py, exact resume, parallelism strategies, device-count changes, SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from transformer.train import metrics as metrics_lib
from transformer.train import train_and_evaluate
from transformer.train.trained_run import load_run

from tests.helpers import (REPO, checkpoint_steps, finish, flag_args, last_json_line,
                           load_config, make_trainer, multi_process_env, run_python,
                           tiny_config, tiny_overrides, train_py)

pytestmark = pytest.mark.slow


def test_train_py_runs_offline_writes_metrics_and_checkpoint_and_learns(tmp_path):
  workdir = tmp_path / 'run'
  overrides = {**tiny_overrides(), 'train.num_steps': 120, 'train.eval_every': 40,
               'train.checkpoint_every': 60, 'train.steps_per_call': 8}
  result = train_py(workdir, overrides, cache=tmp_path / 'xla')
  assert result.returncode == 0, result.stderr[-3000:]
  assert any((tmp_path / 'xla').iterdir())   # the train step was cached for the next run
  assert 'final eval' in result.stdout and 'starting fresh (120 steps)' in result.stdout
  records = metrics_lib.read_metrics(workdir)
  assert records[0]['train/first_step'] == 1
  evals = [r for r in records if 'eval/accuracy' in r]
  assert [r['step'] for r in evals] == [40, 80, 120]
  assert evals[-1]['eval/accuracy'] > evals[0]['eval/accuracy'] + 0.05
  train = [r for r in records if 'train/loss' in r]
  assert train[-1]['step'] == 120 and 'train/tokens_per_sec' in train[-1]
  assert checkpoint_steps(workdir) == [60, 120]
  assert json.loads((workdir / 'config.json').read_text())['train']['num_steps'] == 120
  assert any((workdir / 'tensorboard').iterdir())


def test_a_second_run_loads_its_programs_from_the_compilation_cache(tmp_path):
  """Run twice into two workdirs with one --compilation_cache: the first run fills it, the
  second compiles nothing, however small (JAX's default caches only programs compiling for
  over 1 s), and writes nothing new."""
  cache = tmp_path / 'xla'
  overrides = {**tiny_overrides(), 'train.num_steps': 4, 'train.num_examples_to_show': 1}
  env = dict(os.environ, JAX_LOG_COMPILES='1')
  env.pop('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', None)
  entries = []
  for run in ('first', 'second'):
    result = train_py(tmp_path / run, overrides, cache=cache, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    entries.append({p.name: p.stat().st_mtime_ns for p in cache.iterdir()})
  compiled = re.findall(r'Finished XLA compilation of (\S+)', result.stderr)
  loaded = re.findall(r'Persistent compilation cache hit for', result.stderr)
  assert len(compiled) >= 5 and len(loaded) == len(compiled), result.stderr[-3000:]
  assert entries[1] == entries[0]             # nothing recompiled, nothing rewritten


@pytest.mark.parametrize('steps_per_call', [1, 4])
def test_resume_is_bitwise_exact(tmp_path, steps_per_call):
  def run(workdir, steps):
    trainer = make_trainer(tiny_config(**{'train.num_steps': steps, 'model.dropout_rate': 0.1,
                                     'train.steps_per_call': steps_per_call}), workdir)
    metrics = trainer.run()
    return trainer.final_state, metrics

  straight, straight_metrics = run(tmp_path / 'straight', 16)
  run(tmp_path / 'resumed', 8)
  resumed, resumed_metrics = run(tmp_path / 'resumed', 16)
  assert int(resumed.step) == int(straight.step) == 16
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert straight_metrics == resumed_metrics
  losses = lambda d: [r['train/loss'] for r in metrics_lib.read_metrics(d) if 'train/loss' in r]
  assert losses(tmp_path / 'straight') == losses(tmp_path / 'resumed')


RESUME_PMAP = """
import json
import jax
import numpy as np
from tests.helpers import make_trainer, tiny_config
def run(workdir, steps):
  config = tiny_config(**{'train.num_steps': steps, 'model.dropout_rate': 0.1,
                          'train.steps_per_call': 2})
  config.parallelism = 'pmap'
  trainer = make_trainer(config, workdir)
  metrics = trainer.run()
  return trainer.final_state, metrics
straight, straight_metrics = run('TMP/straight', 12)
run('TMP/resumed', 6)
resumed, resumed_metrics = run('TMP/resumed', 12)
same = all(np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)))
print(json.dumps({'devices': jax.device_count(), 'same': same,
                  'metrics': [straight_metrics, resumed_metrics]}))
"""


def test_resume_under_pmap_on_two_devices_is_bitwise_exact(tmp_path):
  out = last_json_line(run_python(RESUME_PMAP.replace('TMP', str(tmp_path)), devices=2))
  assert out['devices'] == 2 and out['same']
  assert out['metrics'][0] == out['metrics'][1]
  losses = lambda d: [r['train/loss'] for r in metrics_lib.read_metrics(d) if 'train/loss' in r]
  assert losses(tmp_path / 'straight') == losses(tmp_path / 'resumed')


def test_classification_trains_to_high_accuracy(tmp_path):
  """Synthetic strings labelled with their largest symbol (10 classes): chance is far
  below 0.5, and the label needs every position."""
  config = tiny_config(**{'model.num_classes': 10, 'train.num_steps': 150,
                          'train.eval_every': 150, 'train.checkpoint_every': 150,
                          'train.steps_per_call': 10, 'train.log_every': 10,
                          'optim.decay_steps': 150})
  config.task = 'classification'
  metrics = train_and_evaluate(config, tmp_path)
  records = metrics_lib.read_metrics(tmp_path)
  first = next(r for r in records if 'train/accuracy' in r)
  assert first['train/accuracy'] < 0.5
  assert metrics['eval/accuracy'] > 0.95


def test_bfloat16_training_reaches_exact_reversal(tmp_path):
  """The default task, model.dtype='bfloat16' (float32 parameters and optimizer)."""
  config = tiny_config(**{'train.num_steps': 600, 'train.checkpoint_every': 600,
                          'train.eval_every': 600, 'model.d_model': 64, 'model.mlp_dim': 128,
                          'train.steps_per_call': 10, 'train.log_every': 50,
                          'optim.learning_rate': 5e-3, 'optim.warmup_steps': 30,
                          'optim.decay_steps': 600, 'model.dtype': 'bfloat16'})
  assert train_and_evaluate(config, tmp_path)['eval/exact_match'] >= 0.99


def test_a_diverging_run_stops_before_a_nonfinite_checkpoint(tmp_path):
  """Ten good steps (a checkpoint at 10), then a learning rate of 1e4: the run stops with
  one line naming the step and checkpoint 10, exit status 3; checkpoint 10 stays and is
  finite; with train.skip_nonfinite the same run skips those updates and finishes."""
  overrides = {**tiny_overrides(), 'train.num_steps': 10, 'train.checkpoint_every': 10}
  assert train_py(tmp_path / 'run', overrides).returncode == 0
  overrides.update({'train.num_steps': 60, 'optim.learning_rate': 1e4,
                    'optim.schedule': 'constant', 'train.checkpoint_every': 5})
  result = train_py(tmp_path / 'run', overrides)
  assert result.returncode == 3, result.stderr[-2000:]
  message = result.stderr.strip().splitlines()[-1]
  match = re.match(r'stopped: step (\d+): .* step (\d+), is finite', message)
  assert match, message
  stopped, last_good = map(int, match.groups())
  assert 'Traceback' not in result.stderr
  steps = checkpoint_steps(tmp_path / 'run')
  assert steps[0] == 10 and steps[-1] == last_good < stopped
  for step in steps:     # every checkpoint written holds finite values
    state = load_run(tmp_path / 'run', step=step).params
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  records = metrics_lib.read_metrics(tmp_path / 'run')   # strict JSON throughout
  assert records and all(isinstance(r['step'], int) for r in records)

  skipping = train_py(tmp_path / 'skip', {**overrides, 'train.skip_nonfinite': 1000})
  assert skipping.returncode == 0, skipping.stderr[-2000:]
  assert 'update skipped' in skipping.stdout + skipping.stderr
  skipped = sum(r.get('train/skipped_steps', 0) for r in
                metrics_lib.read_metrics(tmp_path / 'skip'))
  assert skipped > 0 and checkpoint_steps(tmp_path / 'skip')[-1] == 60
  params = load_run(tmp_path / 'skip').params
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_checkpoint_resumes_in_the_other_layer_layout(tmp_path):
  """Trained scanned, resumed unrolled, then scanned again: the losses continue as an
  uninterrupted scanned run's (same state, up to float rounding)."""
  def run(workdir, steps, scan):
    config = tiny_config(**{'train.num_steps': steps, 'model.num_layers': 2,
                            'model.scan_layers': scan, 'train.checkpoint_every': 4})
    train_and_evaluate(config, workdir)
    return [r['train/loss'] for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]

  straight = run(tmp_path / 'straight', 12, True)
  run(tmp_path / 'switched', 4, True)     # scanned
  run(tmp_path / 'switched', 8, False)    # resumed unrolled
  np.testing.assert_allclose(run(tmp_path / 'switched', 12, True), straight, rtol=1e-5)


STRATEGIES = """
import json, sys
from tests.helpers import tiny_config
from transformer.train import metrics as metrics_lib, train_and_evaluate
out = {}
for name, parallelism, data, steps_per_call in [
    ('one', 'jit', 1, 1), ('jit4', 'jit', -1, 1), ('pmap4', 'pmap', -1, 1),
    ('jit4_scan2', 'jit', -1, 2), ('pmap4_scan2', 'pmap', -1, 2)]:
  config = tiny_config(**{'train.num_steps': 5, 'train.steps_per_call': steps_per_call})
  config.parallelism = parallelism
  config.mesh.data = data
  workdir = 'TMP/' + name
  train_and_evaluate(config, workdir)
  out[name] = [r['train/loss'] for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]
print(json.dumps(out))
"""


def test_one_device_jit_and_pmap_over_4_devices_give_the_same_losses(tmp_path):
  """... also with several steps per call (5 steps in calls of 2, 2 and 1)."""
  code = STRATEGIES.replace('TMP', str(tmp_path))
  losses = last_json_line(run_python(code, devices=4))
  one = np.asarray(losses['one'])
  assert len(one) == 5
  for name in ('jit4', 'pmap4', 'jit4_scan2', 'pmap4_scan2'):
    np.testing.assert_allclose(losses[name], one, rtol=1e-5, err_msg=name)


def test_steps_per_call_trains_the_same_and_stops_at_every_eval_and_checkpoint(tmp_path):
  def run(workdir, steps_per_call):
    config = tiny_config(**{'train.num_steps': 11, 'train.eval_every': 4,
                            'train.checkpoint_every': 6, 'train.steps_per_call': steps_per_call})
    metrics = train_and_evaluate(config, workdir)
    records = metrics_lib.read_metrics(workdir)
    return metrics, records, checkpoint_steps(workdir)

  metrics, records, steps = run(tmp_path / 'one', 1)
  scan_metrics, scan_records, scan_steps = run(tmp_path / 'five', 5)   # calls of 4, 2, 2, 3
  assert [r['step'] for r in scan_records if 'eval/loss' in r] == [4, 8, 11]
  assert scan_steps == steps == [6, 11]
  losses = lambda rs: [(r['step'], r['train/loss']) for r in rs if 'train/loss' in r]
  assert [s for s, _ in losses(scan_records)] == [s for s, _ in losses(records)]
  assert [s for s, _ in losses(records)] == list(range(1, 12))
  np.testing.assert_allclose([l for _, l in losses(scan_records)],
                             [l for _, l in losses(records)], rtol=1e-5)
  for k, v in metrics.items():
    np.testing.assert_allclose(scan_metrics[k], v, rtol=1e-5, err_msg=k)


@pytest.mark.parametrize('parallelism', ['jit', 'pmap'])
def test_steps_and_examples_compile_once(tmp_path, caplog, parallelism):
  config = tiny_config(**{'train.num_steps': 4, 'train.eval_every': 4,
                          'train.steps_per_call': 2, 'train.num_examples_to_show': 2})
  config.parallelism = parallelism
  trainer = make_trainer(config, tmp_path)
  jax.config.update('jax_log_compiles', True)   # global: the compiling thread sees it too
  try:
    with caplog.at_level('WARNING'):
      trainer.run()
  finally:
    jax.config.update('jax_log_compiles', False)
  compiled = [r.getMessage().split(' with ')[0] for r in caplog.records
              if r.getMessage().startswith('Compiling ')]
  big = [name for name in compiled if 'train' in name or 'steps' in name or 'eval' in name
         or '_fun' in name or 'translate' in name]
  assert len(big) == 3, compiled   # the train and eval steps and the examples' decoding


SPLIT_CPU = """
import json, sys
from tests.helpers import make_trainer, tiny_config
config = tiny_config(**{'train.num_steps': 2})
config.cpu_devices = 2
trainer = make_trainer(config, 'WORKDIR')
trainer.run()
print(json.dumps({'devices': int(trainer.experiment.mesh.devices.size)}))
"""


@pytest.mark.parametrize('forced,expected', [(None, 2), (4, 4)])
def test_cpu_devices_splits_the_cpu_unless_xla_flags_say_otherwise(tmp_path, forced, expected):
  out = last_json_line(run_python(SPLIT_CPU.replace('WORKDIR', str(tmp_path)), devices=forced))
  assert out['devices'] == expected


CONTINUE = """
import json, sys
from tests.helpers import make_trainer, tiny_config
from transformer.train import metrics as metrics_lib
config = tiny_config(**{'train.num_steps': STEPS})
config.mesh.data = DATA
trainer = make_trainer(config, 'WORKDIR')
trainer.run()
print(json.dumps({'devices': trainer.experiment.mesh.devices.size,
                  'losses': [r['train/loss'] for r in metrics_lib.read_metrics('WORKDIR')
                             if 'train/loss' in r]}))
"""


def test_checkpoint_restores_onto_another_device_count(tmp_path):
  """Steps 1-4 on 8 devices, 5-8 on 1, 9-12 on 8 again: the losses are an uninterrupted
  8-device run's."""
  def run(workdir, steps, devices):
    code = (CONTINUE.replace('STEPS', str(steps)).replace('WORKDIR', str(workdir))
            .replace('DATA', '-1' if devices > 1 else '1'))
    out = last_json_line(run_python(code, devices=devices))
    assert out['devices'] == devices and len(out['losses']) == steps
    return out['losses']

  reference = run(tmp_path / 'straight', 12, 8)
  run(tmp_path / 'switched', 4, 8)
  run(tmp_path / 'switched', 8, 1)
  np.testing.assert_allclose(run(tmp_path / 'switched', 12, 8), reference, rtol=1e-4)


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path):
  """... logging the steps since the last record first; the resumed run says where it
  starts, labels its first window, and ends where an uninterrupted run ends; run again,
  it says the workdir is finished."""
  workdir = tmp_path / 'run'
  overrides = {**tiny_overrides(), 'train.num_steps': 100_000, 'train.log_every': 7}
  process = subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={workdir}', *flag_args(overrides)],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_file = workdir / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline:
    if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  assert 'preempted: checkpoint saved at step' in stdout
  saved_step = int(stdout.split('checkpoint saved at step')[1].split()[0])
  assert checkpoint_steps(workdir)[-1] == saved_step > 0
  train = [r for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]
  assert train[-1]['step'] == saved_step      # the last window was logged before exit

  overrides['train.num_steps'] = saved_step + 5
  result = train_py(workdir, overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'resuming from step {saved_step} of {saved_step + 5}' in result.stdout
  assert checkpoint_steps(workdir)[-1] == saved_step + 5
  train = [r for r in metrics_lib.read_metrics(workdir) if 'train/loss' in r]
  after = [r for r in train if r['step'] > saved_step]
  assert after[0]['train/first_step'] == saved_step + 1
  again = train_py(workdir, overrides)
  assert again.returncode == 0 and 'finished (step' in again.stdout
  assert 'final eval' not in again.stdout
  # The interrupted run ends exactly where an uninterrupted one does.
  straight = train_py(tmp_path / 'straight', overrides)
  assert straight.returncode == 0, straight.stderr[-3000:]
  resumed_params, straight_params = (load_run(d).params for d in (workdir, tmp_path / 'straight'))
  for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(straight_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


UNEVEN = """
import sys
from tests.helpers import make_trainer, tiny_config
config = tiny_config(**{'train.num_steps': 3, 'model.vocab_size': 15})
config.mesh.update(data=2, fsdp=2, tensor=2)
trainer = make_trainer(config, 'WORKDIR')
embedding = trainer.experiment.state_sharding.params['source_embedding']['embedding'].spec
kernel = trainer.experiment.state_sharding.params['encoder']['layer_0']['mlp']['wi']['kernel'].spec
trainer.run()
print(repr(tuple(embedding)), repr(tuple(kernel)))
"""


def test_undividable_dimensions_fall_back_to_replication(tmp_path):
  out = run_python(UNEVEN.replace('WORKDIR', str(tmp_path)), devices=8)
  embedding, kernel = out.strip().splitlines()[-1].split(') (')
  assert embedding.startswith('(None,') and "'fsdp'" in embedding   # 15 rows: not split
  assert "'fsdp'" in kernel and "'tensor'" in kernel                # [32, 64]: split both ways


MULTI_PROCESS = """
import json, sys
from tests.helpers import tiny_config
from transformer.train import train_and_evaluate
from transformer.train.trained_run import load_run
config = tiny_config(**{'train.num_steps': NUM_STEPS, 'train.eval_every': 6,
                        'train.checkpoint_every': 6, 'train.num_examples_to_show': 1,
                        'train.eval_bleu': True, 'train.bleu_examples': 8})
config.mesh.update(data=1, fsdp=2)     # the state split between the processes
config.distributed.update(num_processes=2, process_id=PROCESS,
                          coordinator_address='localhost:PORT')
metrics = train_and_evaluate(config, 'WORKDIR')
import jax
print(json.dumps({'process': jax.process_index(), 'processes': jax.process_count(),
                  'devices': jax.device_count(), 'metrics': metrics}))
"""


ONE_PROCESS_REFERENCE = """
import json
import numpy as np
from tests.helpers import tiny_config
from transformer.train import experiment
from transformer.data.datasets import get_datasets
from transformer.train.strategy import JitStrategy
# What the two processes train together: one process with their two devices, fed the
# concatenation of the two processes' shards of each global batch.
config = tiny_config(**{'train.num_steps': 12})
config.mesh.update(data=1, fsdp=2)
exp = experiment.build(config, 'WORKDIR')
needs = exp.task.data_needs(config.data)
shards = [get_datasets(config.data, needs, workdir='WORKDIR', global_batch_size=16, seed=0,
                       process_index=p, process_count=2).train_iter() for p in range(2)]
strategy = JitStrategy(exp.mesh, exp.state_sharding, exp.train_fn, exp.eval_fn)
state, losses = exp.init_state(exp.rng), []
for _ in range(12):
  parts = [next(it) for it in shards]
  batch = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
  state, metrics = strategy.train(state, strategy.put_batch(batch))
  losses.append(float(metrics['loss']))
print(json.dumps(losses))
"""


def _two_processes(workdir, num_steps: int) -> list[tuple[dict, str]]:
  """Runs MULTI_PROCESS as processes 0 and 1 of one run: (their json line, stdout) each."""
  import socket
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  script = (MULTI_PROCESS.replace('PORT', str(port)).replace('WORKDIR', str(workdir))
            .replace('NUM_STEPS', str(num_steps)))
  procs = [subprocess.Popen([sys.executable, '-c', script.replace('PROCESS', str(i))],
                            cwd=REPO, env=multi_process_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  for returncode, stdout, stderr in finish(procs):
    assert returncode == 0, stderr[-3000:]
    outs.append((json.loads(stdout.strip().splitlines()[-1]), stdout))
  return outs


def test_two_processes_train_one_run_together_and_fall_back_from_a_damaged_checkpoint(
    tmp_path):
  # Each process holds, writes and reads half of the state (fsdp over the two).
  runs = _two_processes(tmp_path, 12)
  outs = [out for out, _ in runs]
  assert ['reference:' in stdout for _, stdout in runs] == [True, False]  # examples: process 0
  assert [o['process'] for o in outs] == [0, 1]
  assert all(o['processes'] == 2 and o['devices'] == 2 for o in outs)
  assert outs[0]['metrics'] == outs[1]['metrics'] and 'eval/loss' in outs[0]['metrics']
  records = metrics_lib.read_metrics(tmp_path)
  assert [r['step'] for r in records if 'eval/loss' in r] == [6, 12]   # written once
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 12
  assert checkpoint_steps(tmp_path) == [6, 12]
  reference = last_json_line(run_python(
      ONE_PROCESS_REFERENCE.replace('WORKDIR', str(tmp_path / 'reference')), devices=2))
  np.testing.assert_allclose(losses, reference, rtol=1e-5)

  # A file of the newest checkpoint that only process 1 reads (its half of the state)
  # truncated: process 1's restore fails, process 0's does not (before, process 1 then
  # aborted in a mismatched collective). Both fall back to step 6 and both save step 12
  # again (each process's checkpoint manager must forget the one moved aside).
  files = [p for p in (tmp_path / 'checkpoints' / '12' / 'state' / 'ocdbt.process_1' / 'd'
                       ).iterdir() if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  (first, first_stdout), (second, _) = _two_processes(tmp_path, 18)
  assert ('checkpoint 12 does not restore (FailedOnAnotherProcess: process 1 could not '
          'restore it)') in first_stdout, first_stdout
  assert 'resuming from step 6 of 18' in first_stdout, first_stdout
  assert first['metrics'] == second['metrics']
  assert checkpoint_steps(tmp_path) == [12, 18]       # step 12 saved again by both
  assert [p.name.split('-')[0] for p in (tmp_path / 'checkpoints_damaged').iterdir()] == ['12']


def test_encoder_mlm_config_trains_on_a_local_text_file(tmp_path):
  text = tmp_path / 'text.txt'
  text.write_text(''.join(f'the {w} sat on the mat number {i}\n'
                          for i, w in enumerate(['cat', 'dog', 'bird'] * 100)))
  config = load_config('encoder_mlm')
  config.model.update(d_model=32, num_heads=2, mlp_dim=64, num_layers=1, max_len=64)
  config.data.update(path=str(text), tokenizer='char', max_len=64)
  config.optim.update(warmup_steps=5, learning_rate=3e-3)
  config.train.update(num_steps=40, batch_size=8, eval_every=40, checkpoint_every=40,
                      log_every=1, eval_batches=4)
  metrics = train_and_evaluate(config, tmp_path / 'run')
  records = metrics_lib.read_metrics(tmp_path / 'run')
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert losses[-1] < losses[0] - 0.5
  assert 'eval/accuracy' in metrics and metrics['eval/loss'] < losses[0]
