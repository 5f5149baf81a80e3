"""Tiny training configs, data configs and a runner for subprocesses with simulated devices.

Test modules import this as `tests.helpers`; code run in a subprocess (cwd = the repository)
imports it the same way.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

from tests.conftest import MULTI30K, REPO
from transformer.train.defaults import config_from_file


def load_config(name: str = 'default'):
  return config_from_file(REPO / 'configs' / f'{name}.py')


def tiny_overrides() -> dict[str, object]:
  """configs/default.py shrunk to compile and run in seconds."""
  return {
      'model.d_model': 32, 'model.num_heads': 2, 'model.mlp_dim': 64, 'model.num_layers': 1,
      'model.max_len': 16,
      'data.synthetic_min_len': 2, 'data.synthetic_max_len': 6, 'data.max_len': 8,
      'data.synthetic_train_size': 4000, 'data.synthetic_eval_size': 64,
      'train.batch_size': 16, 'train.log_every': 1, 'train.eval_every': 1000,
      'train.checkpoint_every': 1000, 'train.num_examples_to_show': 0, 'train.steps_per_call': 1,
      'optim.warmup_steps': 5, 'optim.decay_steps': 200, 'optim.learning_rate': 3e-3,
  }


def tiny_config(name: str = 'default', **changes):
  """A config file's config with the tiny overrides and then `changes` ('section.field')."""
  config = load_config(name)
  for key, value in {**tiny_overrides(), **changes}.items():
    section, field = key.split('.')
    setattr(config[section], field, value)
  return config


def flag_args(overrides: dict[str, object]) -> list[str]:
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def finish(procs: list[subprocess.Popen], timeout: float = 300
           ) -> list[tuple[int, str, str]]:
  """(status, stdout, stderr) of each of the processes of one multi-process run. One that
  has not ended within `timeout` fails the test with every process's Python stacks (each
  started with PYTHONFAULTHANDLER=1, as `multi_process_env` does, is sent SIGABRT)."""
  results = []
  for p in procs:
    try:
      stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        if q.poll() is None:
          q.send_signal(signal.SIGABRT)
      tails = []
      for q in procs:
        try:
          stderr = q.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
          q.kill()
          stderr = q.communicate()[1]
        dump = stderr.rfind('Fatal Python error')   # the stacks, not what follows them
        tails.append(stderr[-20000:] if dump < 0 else stderr[max(0, dump - 2000):][:20000])
      raise AssertionError(f'timed out after {timeout} s:\n' + '\n'.join(
          f'--- process {i} ---\n{tail}' for i, tail in enumerate(tails))) from None
    results.append((p.returncode, stdout, stderr))
  return results


def multi_process_env(extra: dict | None = None) -> dict[str, str]:
  """The environment of one process of a multi-process run started by a test: the repo
  importable, Python's stacks dumped on a fatal signal (`finish`), and gloo's collectives
  given 10 minutes (a loaded machine) before they end the process."""
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER='1',
             XLA_FLAGS='--xla_cpu_collective_call_terminate_timeout_seconds=600')
  env.update(extra or {})
  return env


def multi30k_config(**overrides):
  """The data config of a Multi30k en -> de run with a small shared vocabulary."""
  from transformer.data.config import default_data_config
  c = default_data_config()
  c.source = 'parallel'
  c.path = str(MULTI30K)
  c.src_lang, c.tgt_lang = 'en', 'de'
  c.tokenizer = 'sentencepiece'
  c.vocab_size = 2000
  c.max_len = 64
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def xla_env(devices: int | None = 1) -> dict[str, str]:
  """The environment of a subprocess with `devices` simulated CPU devices (None: what the
  code asks for), and the repository on its path."""
  env = dict(os.environ)
  # 8 simulated devices on 2 busy cores can take longer than XLA's 40 s to meet at a
  # collective; a slow test is better than an aborted one.
  count = '' if devices is None else f'--xla_force_host_platform_device_count={devices} '
  env['XLA_FLAGS'] = (count + '--xla_cpu_collective_call_terminate_timeout_seconds=600 '
                      '--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 '
                      '--xla_cpu_collective_timeout_seconds=600')
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  return env


def run_python(code: str, devices: int | None = 1, timeout: float = 300) -> str:
  """Runs `code` in a fresh interpreter (cwd = the repository) with `devices` simulated
  CPU devices."""
  result = subprocess.run([sys.executable, '-c', code], env=xla_env(devices), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    raise AssertionError(f'subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return result.stdout


def last_json_line(stdout: str):
  return json.loads(stdout.strip().splitlines()[-1])


def task_datasets(config, task: str, **kwargs):
  """`get_datasets` with what task `task` needs from the data config `config`."""
  from transformer.data.datasets import get_datasets
  from transformer.tasks import get_task
  return get_datasets(config, get_task(task).data_needs(config), **kwargs)


def make_trainer(config, workdir):
  """What train.py does before `run()`: set up the process, build, hand over to a Trainer."""
  from transformer.train import experiment
  from transformer.train import process
  from transformer.train.loop import Trainer
  process.setup(config)
  return Trainer(experiment.build(config, workdir))


def train_py(workdir, overrides: dict, *, cache=None, config: str | None = None,
             env: dict | None = None, timeout: float = 300,
             extra_args: list[str] = ()) -> subprocess.CompletedProcess:
  """Runs `python train.py` into `workdir` (a fresh process, as a user runs it); `cache`:
  its --compilation_cache (None: the tests' shared cache from the environment)."""
  env = dict(os.environ if env is None else env)
  args = [sys.executable, 'train.py', f'--workdir={workdir}', *flag_args(overrides),
          *extra_args]
  if config:
    args.insert(2, f'--config={config}')
  if cache is not None:
    env.pop('JAX_COMPILATION_CACHE_DIR', None)   # the flag's directory, not the tests' own
    args.append(f'--compilation_cache={cache}')
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())
