"""Train-step throughput and MFU of the shipped configs, and the data pipeline beside it.

For each config: the jitted, donated train step on batches of the config's shape (random
tokens, every position real), timed after compilation, on 1 device and on the CPU split
into 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, each in its own
process); MFU is against a float32 2048x2048 matrix product measured in the same process.
Then Multi30k's packed input pipeline on the same machine: it must be >= 10x faster than
the step it feeds.

    python benchmarks/train_throughput.py [--steps 30]
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ('default', 'shakespeare_char', 'multi30k_ende')


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def compiled_train_step(config, vocab: int, steps_per_call: int = 1):
  """(experiment, initial state, the trainer's jitted and donated train step) for `config`
  over all devices, built as train.py builds it; with `steps_per_call > 1` the step takes
  that many batches stacked (train.steps_per_call)."""
  from transformer.train import experiment
  from transformer.train.strategy import JitStrategy

  exp = experiment.build(config, vocab_size=vocab)
  strategy = JitStrategy(exp.mesh, exp.state_sharding, exp.train_fn, exp.eval_fn,
                         steps_per_call)
  return exp, exp.init_state(exp.rng), strategy.train


def random_batch(exp, rows: int, vocab: int, seed: int = 0) -> dict:
  """A batch of the task's shape: random real tokens in every position, finalized as the
  data pipeline finalizes padded batches (decoder inputs, weights...)."""
  import numpy as np
  needs = exp.task.data_needs(exp.config.data)
  rng = np.random.default_rng(seed)
  batch = {}
  for name, spec in needs.sequences.items():
    batch[name] = rng.integers(5, vocab, (rows, spec.length)).astype(np.int32)
    batch[f'{name}_segment_ids'] = np.ones((rows, spec.length), np.int32)   # all real
  if needs.label:
    batch['label'] = rng.integers(0, exp.model_config.num_classes, rows).astype(np.int32)
  batch = needs.finalize(batch, packed=False, rng=rng, tokenizer=None)
  return {k: v for k, v in batch.items() if not k.endswith('_segment_ids')}


def measure_step(name: str, steps: int) -> dict:
  """Runs in a child process (the device count is fixed when jax starts)."""
  import jax
  from transformer import sharding
  from transformer.train import metrics

  config = load_config(name)
  vocab = {'default': 15, 'shakespeare_char': 65, 'multi30k_ende': 5000}[name]
  exp, state, train = compiled_train_step(config, vocab)
  rows = config.train.batch_size
  batch = random_batch(exp, rows, vocab)
  lengths = exp.task.sequence_lengths(config.data)
  batch = sharding.global_batch(batch, exp.mesh)
  state, out = train(state, batch)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = train(state, batch)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / steps
  tokens = float(out['tokens'])   # tokens the model processed per step
  flops = exp.task.flops_per_token(exp.model_config, lengths) * tokens
  peak = metrics.measured_matmul_flops()
  return {'config': name, 'devices': jax.device_count(), 'ms_per_step': 1e3 * seconds,
          'tokens_per_sec': tokens / seconds, 'mfu': flops / seconds / peak,
          'peak_gflops': peak / 1e9}


def packed_tokens_per_sec(train_config, workdir, batches: int = 100) -> float:
  """Target tokens/s of `train_config`'s packed training batches (its data block; the
  token store goes under `workdir`, or is opened there)."""
  from transformer.data.datasets import get_datasets
  from transformer.tasks import get_task
  config = train_config.data
  ds = get_datasets(config, get_task(train_config.task).data_needs(config), workdir=workdir,
                    global_batch_size=train_config.train.batch_size, seed=0,
                    process_index=0, process_count=1)
  iterator = ds.train_iter()
  next(iterator)
  start, tokens = time.perf_counter(), 0.0
  for _ in range(batches):
    tokens += float(next(iterator)['weights'].sum())
  return tokens / (time.perf_counter() - start)


def pipeline_tokens_per_sec(batches: int = 100) -> float | None:
  """Target tokens/s of Multi30k's packed training batches (configs/multi30k_ende.py)."""
  train_config = load_config('multi30k_ende')
  train_config.data.path = str(REPO.parent / 'shared' / 'data' / 'multi30k')
  if not pathlib.Path(train_config.data.path).is_dir():
    return None
  with tempfile.TemporaryDirectory() as workdir:
    return packed_tokens_per_sec(train_config, workdir, batches)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure_step(args.child, args.steps)))
    return
  rows = []
  for name in CONFIGS:
    for devices in (1, 2):
      env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
      out = subprocess.run([sys.executable, __file__, '--child', name, '--steps',
                            str(args.steps)], env=env, capture_output=True, text=True,
                           check=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
  print(f'{"config":<18} {"devices":>7} {"ms/step":>8} {"tokens/s":>10} {"MFU":>6} '
        f'{"peak GFLOP/s":>12}')
  for r in rows:
    print(f'{r["config"]:<18} {r["devices"]:>7} {r["ms_per_step"]:>8.1f} '
          f'{r["tokens_per_sec"]:>10,.0f} {r["mfu"]:>6.1%} {r["peak_gflops"]:>12.0f}')
  pipeline = pipeline_tokens_per_sec()
  if pipeline is not None:
    step = max(r['tokens_per_sec'] for r in rows if r['config'] == 'multi30k_ende')
    print(f'\nMulti30k packed pipeline: {pipeline:,.0f} target tokens/s = {pipeline / step:,.0f}x '
          f'the fastest multi30k_ende train step above')


if __name__ == '__main__':
  main()
