"""Data at WMT14 scale: a parallel corpus of 1M and 4.5M pairs, from raw text to training.

For each size the benchmark builds (once, cached, not timed) a synthetic English-German
corpus from Multi30k's training captions: each line joins 1 to 3 random caption pairs, so
lengths vary like news sentences (about 1.1 GB of text at 4.5M pairs, WMT14 en-de's size).
Then, one after the other on this machine:

  1. first run: `train.py --config configs/multi30k_ende.py` on that corpus into an empty
     workdir, one train step: SentencePiece trained on a 10M-character sample, the corpus
     tokenized into the token store by one worker process per core, the model compiled
     (into an empty compilation cache), the first step taken. Wall time and peak memory of
     the process tree (sampled every 50 ms: the trainer and its workers together), both
     resident (RSS) and private (RSS less file-backed pages: the memory-mapped store's
     pages are page cache the kernel can drop, and they are mapped as packing reads them);
  2. second run: the same workdir and compilation cache, one more step (the store is
     memory-mapped, nothing is tokenized again), as a user's second run: wall time and
     peak memory;
  3. packing: packed training batches of the multi30k_ende shape (64 rows of 48 tokens)
     read from the store, target tokens per second, against the demand of the
     multi30k_ende train step measured by benchmarks/train_throughput.py on this machine.

    python benchmarks/data_scale.py [--sizes 1000000 4500000] [--cache /tmp/data_scale]
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / 'shared' / 'data' / 'multi30k'


def make_corpus(pairs: int, folder: pathlib.Path) -> pathlib.Path:
  """`folder/{train,valid,test}.{en,de}`: `pairs` joined caption pairs in train, Multi30k's
  own valid and test. Reused when it exists."""
  if (folder / 'done').exists():
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  en = (MULTI30K / 'train.en').read_text().splitlines()
  de = (MULTI30K / 'train.de').read_text().splitlines()
  rng = np.random.default_rng(0)
  with (folder / 'train.en').open('w') as f_en, (folder / 'train.de').open('w') as f_de:
    for start in range(0, pairs, 100_000):
      n = min(100_000, pairs - start)
      counts = rng.integers(1, 4, n)
      picks = rng.integers(0, len(en), int(counts.sum()))
      position = 0
      lines_en, lines_de = [], []
      for count in counts:
        chosen = picks[position:position + count]
        position += count
        lines_en.append(' '.join(en[i] for i in chosen))
        lines_de.append(' '.join(de[i] for i in chosen))
      f_en.write('\n'.join(lines_en) + '\n')
      f_de.write('\n'.join(lines_de) + '\n')
  for split in ('valid', 'test'):
    for side in ('en', 'de'):
      shutil.copy(MULTI30K / f'{split}.{side}', folder / f'{split}.{side}')
  (folder / 'done').write_text('')
  return folder


class PeakMemory:
  """The largest sums over a process and its descendants, sampled: of resident memory
  (`rss`), and of resident memory that no file backs (`private`: rss - shared, which leaves
  out the memory-mapped token store's pages, reclaimable page cache, and shared libraries)."""

  def __init__(self, pid: int):
    import psutil
    self.process, self.rss, self.private = psutil.Process(pid), 0, 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()

  def _watch(self):
    import psutil
    while not self._stop.is_set():
      try:
        tree = [self.process] + self.process.children(recursive=True)
        rss = private = 0
        for p in tree:
          try:
            info = p.memory_info()
          except psutil.NoSuchProcess:
            continue
          rss, private = rss + info.rss, private + info.rss - info.shared
        self.rss, self.private = max(self.rss, rss), max(self.private, private)
      except psutil.NoSuchProcess:
        return
      time.sleep(0.05)

  def stop(self) -> tuple[int, int]:
    self._stop.set()
    self._thread.join()
    return self.rss, self.private


def train(corpus: pathlib.Path, workdir: pathlib.Path, steps: int) -> dict:
  """`steps` steps of train.py on `corpus` into `workdir`, with a compilation cache in
  it (empty for the first run, as a user's default cache is after a first run for the
  second)."""
  args = [sys.executable, 'train.py', '--config', 'configs/multi30k_ende.py',
          f'--workdir={workdir}', f'--config.data.path={corpus}',
          f'--config.train.num_steps={steps}', '--config.train.eval_every=1000000',
          '--config.train.eval_bleu=False', '--config.train.num_examples_to_show=0',
          '--config.train.eval_batches=1', '--config.train.checkpoint_every=1000000',
          f'--compilation_cache={workdir.parent / "xla"}']
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_COMPILATION_CACHE_DIR',)}
  start = time.perf_counter()
  process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  memory = PeakMemory(process.pid)
  stdout, stderr = process.communicate()
  seconds = time.perf_counter() - start
  rss, private = memory.stop()
  if process.returncode:
    raise RuntimeError(stderr[-3000:])
  return {'seconds': seconds, 'peak_gib': rss / 2**30, 'private_gib': private / 2**30}


def packing(workdir: pathlib.Path, corpus: pathlib.Path, batches: int = 300) -> float:
  """Target tokens/s of packed training batches read from the (existing) store."""
  sys.path.insert(0, str(REPO))
  from benchmarks.train_throughput import load_config, packed_tokens_per_sec
  config = load_config('multi30k_ende')
  config.data.path = str(corpus)
  return packed_tokens_per_sec(config, workdir, batches)


def step_demand() -> float:
  """Target tokens/s of the fastest multi30k_ende train step (1 or 2 devices) here."""
  rates = []
  for devices in (1, 2):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    out = subprocess.run([sys.executable, 'benchmarks/train_throughput.py', '--child',
                          'multi30k_ende', '--steps', '5'], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout
    rates.append(json.loads(out.strip().splitlines()[-1])['tokens_per_sec'])
  return max(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[1_000_000, 4_500_000])
  parser.add_argument('--cache', default=str(pathlib.Path(tempfile.gettempdir()) / 'data_scale'))
  args = parser.parse_args()
  cores = len(os.sched_getaffinity(0))
  demand = step_demand()
  rows = []
  for size in args.sizes:
    corpus = make_corpus(size, pathlib.Path(args.cache) / f'corpus-{size}')
    text_gb = sum(p.stat().st_size for p in corpus.glob('train.*')) / 1e9
    with tempfile.TemporaryDirectory() as tmp:
      workdir = pathlib.Path(tmp) / 'run'
      first = train(corpus, workdir, steps=1)
      manifest = json.loads(next((workdir / 'data' / 'store').glob('*/manifest.json'))
                            .read_text())
      second = train(corpus, workdir, steps=2)
      rate = packing(workdir, corpus)
      rows.append((size, text_gb, first, manifest['build_seconds'], second, rate))
      print(f'{size:,} pairs done', flush=True)
  print(f'\n{cores} cores; multi30k_ende train step demand: {demand:,.0f} target tokens/s '
        f'({demand / cores:,.0f} per core)')
  print(f'{"pairs":>10} {"text GB":>8} {"1st run s":>10} {"(store s)":>10} {"peak GiB":>9} '
        f'{"private":>8} {"2nd run s":>10} {"peak GiB":>9} {"private":>8} '
        f'{"packed tok/s":>13} {"x demand/core":>14}')
  for size, text_gb, first, store_s, second, rate in rows:
    print(f'{size:>10,} {text_gb:>8.2f} {first["seconds"]:>10.0f} {store_s:>10.0f} '
          f'{first["peak_gib"]:>9.2f} {first["private_gib"]:>8.2f} {second["seconds"]:>10.0f} '
          f'{second["peak_gib"]:>9.2f} {second["private_gib"]:>8.2f} {rate:>13,.0f} '
          f'{rate / (demand / cores):>14,.0f}')


if __name__ == '__main__':
  main()
