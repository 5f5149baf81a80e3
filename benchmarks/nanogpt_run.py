"""The whole Tiny Shakespeare run against the real nanoGPT, side by side on this machine.

Both are timed as a user runs them: the wall clock of a fresh process, from start to exit
(imports, data, compilation, evaluation and checkpoints included).

  - nanoGPT: its own `train.py` (a checkout you pass with --nanogpt, e.g. fetched from
    karpathy/nanoGPT; nothing of it is copied into this repository) with its README's
    CPU settings: `config/train_shakespeare_char.py --device=cpu --compile=False
    --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
    --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, on the
    data its `data/shakespeare_char/prepare.py` makes from ../shared/data's input.txt
    (copied into a scratch copy of the checkout, so its download step is skipped). It
    needs PyTorch: `--torch_python` names an interpreter that has it. Its validation loss
    is its own estimate at iteration 2000 (20 random batches).
  - ours: `python train.py --config configs/shakespeare_char.py` into an empty workdir,
    first with an empty compilation cache ("cold"), then again with the cache that run
    filled ("warm"). Its validation loss is the mean over every character of the last 10%.

The three alternate, `--repeats` times, so that all see the same machine; the table gives
medians and our time as a fraction of nanoGPT's.

    python benchmarks/nanogpt_run.py --nanogpt ../peers/nanoGPT --torch_python PYTHON
"""

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = REPO.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'
NANOGPT_CPU_FLAGS = ['--device=cpu', '--compile=False', '--eval_iters=20', '--log_interval=1',
                     '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
                     '--n_embd=128', '--max_iters=2000', '--lr_decay_iters=2000',
                     '--dropout=0.0']


def prepare_nanogpt(checkout: pathlib.Path, scratch: pathlib.Path, python: str) -> pathlib.Path:
  """A scratch copy of the checkout with its shakespeare_char data prepared."""
  target = scratch / 'nanoGPT'
  shutil.copytree(checkout, target, ignore=shutil.ignore_patterns('.git', 'assets'))
  data = target / 'data' / 'shakespeare_char'
  shutil.copy(TEXT, data / 'input.txt')
  subprocess.run([python, 'prepare.py'], cwd=data, check=True, capture_output=True)
  return target


def run_nanogpt(copy: pathlib.Path, python: str) -> tuple[float, float]:
  with tempfile.TemporaryDirectory() as out_dir:
    start = time.perf_counter()
    out = subprocess.run([python, 'train.py', 'config/train_shakespeare_char.py',
                          *NANOGPT_CPU_FLAGS, f'--out_dir={out_dir}'], cwd=copy,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
  val = float(re.findall(r'step 2000: train loss [0-9.]+, val loss ([0-9.]+)', out.stdout)[-1])
  return wall, val


def run_ours(cache: str) -> tuple[float, float]:
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
  parser.add_argument('--nanogpt', required=True, help="a checkout of karpathy/nanoGPT")
  parser.add_argument('--torch_python', default=sys.executable,
                      help='a Python with PyTorch for nanoGPT (default: this one)')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  if not TEXT.is_file():
    sys.exit(f'{TEXT} is missing')
  names = ('nanoGPT train.py (PyTorch, CPU)', 'ours, cold (empty compilation cache)',
           'ours, warm (compilation cache)')
  runs = {name: [] for name in names}
  with tempfile.TemporaryDirectory() as scratch:
    copy = prepare_nanogpt(pathlib.Path(args.nanogpt), pathlib.Path(scratch), args.torch_python)
    for _ in range(args.repeats):
      with tempfile.TemporaryDirectory() as cache:
        for name, run in zip(names, (lambda: run_nanogpt(copy, args.torch_python),
                                     lambda: run_ours(cache), lambda: run_ours(cache))):
          runs[name].append(run())
          print(f'{name}: {runs[name][-1][0]:.1f} s, val loss {runs[name][-1][1]:.3f}',
                flush=True)
  medians = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
  reference = medians[names[0]]
  print(f'\n{"Tiny Shakespeare, 2000 iterations":<38} {"wall s (median)":>16} {"runs":>12} '
        f'{"val loss":>9} {"time vs nanoGPT":>16}')
  for name, r in runs.items():
    walls = '/'.join(f'{w:.0f}' for w, _ in r)
    print(f'{name:<38} {medians[name]:>16.1f} {walls:>12} {r[-1][1]:>9.3f} '
          f'{medians[name] / reference:>15.2f}x')


if __name__ == '__main__':
  main()
