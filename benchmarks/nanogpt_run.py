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
    is its own estimate at the last iteration (20 random batches).
  - ours: `python train.py --config configs/shakespeare_char.py` (the same settings) into
    an empty workdir, first with an empty compilation cache ("cold"), then again with the
    cache that run filled ("warm"). Its validation loss is the mean over every character
    of the last 10%.
  - the fast recipe, `configs/shakespeare_char_fast.py` (the same model and batch, peak
    learning rate 3e-3 after 50 warmup steps, Adam's b1 0.8, 1100 steps), run by both:
    nanoGPT with the same flags changed (`--learning_rate=3e-3 --warmup_iters=50
    --beta1=0.8 --max_iters=1100 --lr_decay_iters=1100 --eval_interval=220`, so that it
    evaluates at 1100), ours cold and warm. Each time is given against nanoGPT's README run and against nanoGPT
    running the same recipe.

Each group alternates its runs, `--repeats` times, so that all see the same machine; the
table gives medians.

    python benchmarks/nanogpt_run.py --nanogpt ../peers/nanoGPT --torch_python PYTHON
"""

import argparse
import collections
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


# recipe -> (our config, nanoGPT's flags on top of its README settings; later flags win).
RECIPES = {
    'readme': ('shakespeare_char', []),
    'fast': ('shakespeare_char_fast', ['--learning_rate=3e-3', '--warmup_iters=50',
                                       '--beta1=0.8', '--max_iters=1100',
                                       '--lr_decay_iters=1100', '--eval_interval=220']),
}


def run_nanogpt(copy: pathlib.Path, python: str, extra_flags=()) -> tuple[float, float]:
  with tempfile.TemporaryDirectory() as out_dir:
    start = time.perf_counter()
    out = subprocess.run([python, 'train.py', 'config/train_shakespeare_char.py',
                          *NANOGPT_CPU_FLAGS, *extra_flags, f'--out_dir={out_dir}'], cwd=copy,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
  # Its estimate at the last evaluation, which is the last iteration.
  val = float(re.findall(r'step \d+: train loss [0-9.]+, val loss ([0-9.]+)', out.stdout)[-1])
  return wall, val


def run_ours(config: str, cache: str) -> tuple[float, float]:
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR')}
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, 'train.py', '--config', f'configs/{config}.py',
                          '--workdir', workdir, f'--compilation_cache={cache}'], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
  return wall, float(re.search(r'eval/loss ([0-9.]+)', out.stdout.split('final eval:')[-1])[1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--nanogpt', required=True, help="a checkout of karpathy/nanoGPT")
  parser.add_argument('--torch_python', default=sys.executable,
                      help='a Python with PyTorch for nanoGPT (default: this one)')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--recipes', nargs='+', choices=tuple(RECIPES),
                      default=['readme', 'fast'],
                      help="ours on nanoGPT's README settings and/or the fast recipe "
                      "(nanoGPT's README run is always the reference)")
  args = parser.parse_args()
  if not TEXT.is_file():
    sys.exit(f'{TEXT} is missing')
  reference = 'nanoGPT train.py, README settings'
  runs = collections.defaultdict(list)   # row -> [(wall, val loss)] in run order
  peer_of = {reference: reference}         # row -> nanoGPT's row of the same recipe

  def record(name, result):
    runs[name].append(result)
    print(f'{name}: {result[0]:.1f} s, val loss {result[1]:.3f}', flush=True)

  with tempfile.TemporaryDirectory() as scratch:
    copy = prepare_nanogpt(pathlib.Path(args.nanogpt), pathlib.Path(scratch), args.torch_python)
    for _ in range(args.repeats):
      record(reference, run_nanogpt(copy, args.torch_python))
      for recipe in args.recipes:
        config, flags = RECIPES[recipe]
        peer = f'nanoGPT train.py, {recipe} recipe' if flags else reference
        if flags:
          record(peer, run_nanogpt(copy, args.torch_python, flags))
          peer_of[peer] = peer
        cache = tempfile.mkdtemp(dir=scratch)   # the cold run fills it, the warm run reads it
        for when in ('cold', 'warm'):
          name = f'ours, {config}.py, {when}'
          record(name, run_ours(config, cache))
          peer_of[name] = peer
  medians = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
  print(f'\n{"Tiny Shakespeare, whole run":<38} {"wall s":>8} {"runs":>10} {"val loss":>9} '
        f'{"vs nanoGPT README":>18} {"vs nanoGPT same recipe":>23}')
  for name, r in runs.items():
    walls = '/'.join(f'{w:.0f}' for w, _ in r)
    print(f'{name:<38} {medians[name]:>8.1f} {walls:>10} {r[-1][1]:>9.3f} '
          f'{medians[name] / medians[reference]:>17.2f}x '
          f'{medians[name] / medians[peer_of[name]]:>22.2f}x')


if __name__ == '__main__':
  main()
