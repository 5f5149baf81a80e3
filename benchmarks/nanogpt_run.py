"""The whole Tiny Shakespeare run against nanoGPT's training loop, in one run on this machine.

Times, as the wall clock of a fresh process each (imports, data, compilation included):
  - ours: `python train.py --config configs/shakespeare_char.py` into an empty workdir,
    first with an empty compilation cache, then again with the cache the first run filled
    (its validation loss is the mean over every character of the last 10% of the file);
  - nanoGPT: its train.py loop at its README's CPU settings, rebuilt here in PyTorch eager
    (nanoGPT's code is not vendored): the GPT of benchmarks/nanogpt_step.py with nanoGPT's
    initialisation, random 64-character windows of the first 90% of the file, AdamW
    (0.9, 0.99), weight decay 0.1 on matrices, clip 1.0, lr 1e-3 with 100 warmup steps and
    cosine decay to 1e-4, iterations 0..2000, `estimate_loss` (20 batches of train and of
    val) every 250 iterations, a checkpoint when the val loss improves, a log line every 10.
    Its validation loss is that estimate at iteration 2000.
The two alternate (`--repeats` times each) so that both see the same machine. Needs
`pip install torch` (not a dependency of the package).

    python benchmarks/nanogpt_run.py [--repeats 2]
"""

import argparse
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = REPO.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'

# nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides.
MAX_ITERS, EVAL_INTERVAL, EVAL_ITERS, LOG_INTERVAL = 2000, 250, 20, 10
LEARNING_RATE, MIN_LR, WARMUP, DECAY_ITERS = 1e-3, 1e-4, 100, 2000


def nanogpt_lr(it: int) -> float:
  """nanoGPT's get_lr: linear warmup, then cosine down to MIN_LR."""
  if it < WARMUP:
    return LEARNING_RATE * (it + 1) / (WARMUP + 1)
  if it > DECAY_ITERS:
    return MIN_LR
  ratio = (it - WARMUP) / (DECAY_ITERS - WARMUP)
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


def nanogpt_child(out_dir: str) -> dict:
  import torch

  from nanogpt_step import B, T, torch_gpt, torch_step  # benchmarks/ is sys.path[0]

  text = TEXT.read_text()
  lookup = {c: i for i, c in enumerate(sorted(set(text)))}   # nanoGPT's prepare.py
  ids = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
  split = int(len(ids) * 0.9)
  data = {'train': ids[:split], 'val': ids[split:]}
  torch.manual_seed(1337)

  def get_batch(name):
    d = data[name]
    ix = torch.randint(len(d) - T, (B,))
    return (torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + 1 + T] for i in ix]))

  model, opt = torch_gpt()

  @torch.no_grad()
  def estimate_loss():
    model.eval()
    out = {name: float(torch.stack([model(*get_batch(name)) for _ in range(EVAL_ITERS)]).mean())
           for name in ('train', 'val')}
    model.train()
    return out

  best_val, val = float('inf'), float('nan')
  for it in range(MAX_ITERS + 1):
    for group in opt.param_groups:
      group['lr'] = nanogpt_lr(it)
    if it % EVAL_INTERVAL == 0:
      losses = estimate_loss()
      val = losses['val']
      print(f"step {it}: train loss {losses['train']:.4f}, val loss {val:.4f}", flush=True)
      if val < best_val:
        best_val = val
        if it > 0:
          torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict()},
                     os.path.join(out_dir, 'ckpt.pt'))
    loss = torch_step(model, opt, *get_batch('train'))
    if it % LOG_INTERVAL == 0:
      print(f'iter {it}: loss {loss:.4f}', flush=True)
  return {'val_loss': val}


def run_nanogpt() -> tuple[float, float]:
  with tempfile.TemporaryDirectory() as out_dir:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, '--child', out_dir], capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - start
  return wall, json.loads(out.stdout.strip().splitlines()[-1])['val_loss']


def run_ours(cache: str) -> tuple[float, float]:
  """train.py into an empty workdir, with `cache` as its compilation cache."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR')}
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, 'train.py', '--config', 'configs/shakespeare_char.py',
                          '--workdir', workdir, f'--compilation_cache={cache}'], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
  return wall, float(re.search(r'eval/loss ([0-9.]+)', out.stdout.split('final eval:')[-1])[1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(nanogpt_child(args.child)))
    return
  if not TEXT.is_file():
    sys.exit(f'{TEXT} is missing')
  runs = {'nanoGPT loop (PyTorch eager)': [], 'ours, first run (compiles)': [],
          'ours, again (compilation cache)': []}
  for _ in range(args.repeats):
    with tempfile.TemporaryDirectory() as cache:   # empty: the first run compiles everything
      for name, run in zip(runs, (run_nanogpt, lambda: run_ours(cache),
                                  lambda: run_ours(cache))):
        runs[name].append(run())
        print(f'{name}: {runs[name][-1][0]:.1f} s, val loss {runs[name][-1][1]:.3f}',
              flush=True)
  medians = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
  reference = medians['nanoGPT loop (PyTorch eager)']
  print(f'\n{"Tiny Shakespeare, 2000 iterations":<34} {"wall s (median)":>16} {"runs":>12} '
        f'{"val loss":>9} {"speed":>7}')
  for name, r in runs.items():
    walls = '/'.join(f'{w:.0f}' for w, _ in r)
    print(f'{name:<34} {medians[name]:>16.1f} {walls:>12} {r[-1][1]:>9.3f} '
          f'{reference / medians[name]:>6.2f}x')


if __name__ == '__main__':
  main()
