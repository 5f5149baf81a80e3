"""What the token-store choice costs on a pod: each host building its own store in its cache
from the corpus URL (what `get_datasets` does for a URL workdir), against fetching a store
built once from the bucket, and against reading the batches out of the bucket itself.

For each corpus (Tiny Shakespeare repeated `--copies` times, in a fake-gcs-server bucket on
a loopback port, `tests/cloud.py`) and tokenizer:

- host 0: `get_datasets` into an empty cache (fetches the corpus, makes and publishes the
  tokenizer, builds the store);
- another host: the same into another empty cache: fetches the corpus and the published
  tokenizer, builds its store (what each further host pays today);
- fetching instead: host 0's store uploaded to the bucket (what host 0 would add before
  the others may start), then downloaded into an empty folder (what each further host
  would pay instead of building);
- a batch of `--rows` random windows of `--length` tokens (configs/shakespeare_char.py's
  shape): from the memory-mapped local store, and from the store's object in the bucket
  (one ranged read per row, issued together through fsspec's `cat_ranges`).

Bucket reads here cross a loopback socket, not a network: a real bucket's latency (tens of
ms per request) only widens the gap. The machine is shared; compare within one run.

    python benchmarks/token_store.py --copies 1 16 --tokenizers char sentencepiece
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import cloud  # noqa: E402

SHAKESPEARE = REPO.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'


def data_config(url: str, tokenizer: str):
  from transformer.train.defaults import config_from_file
  config = config_from_file(REPO / 'configs' / 'shakespeare_char.py')
  config.data.path = url
  if tokenizer == 'sentencepiece':
    config.data.update(tokenizer='sentencepiece', vocab_size=2000)
  return config


def host(config, workdir: str, cache: pathlib.Path):
  """`get_datasets` as one host of a URL workdir runs it, into cache `cache`: (seconds,
  its store folder)."""
  from transformer import storage
  from transformer.data import datasets
  from transformer.tasks import get_task
  os.environ['TRANSFORMER_CACHE'] = str(cache)
  needs = get_task(config.task).data_needs(config.data)
  local = storage.local_dir(workdir)
  start = time.perf_counter()
  datasets.get_datasets(config.data, needs, workdir=workdir, local_dir=local,
                        global_batch_size=12, seed=0, process_index=0, process_count=1,
                        barrier=lambda name: None)
  seconds = time.perf_counter() - start
  where = datasets.folders(config.data, workdir, local_dir=local)
  (store,) = (where.data / 'store').iterdir()
  return seconds, store


def batch_reads(store: pathlib.Path, url: str, rows: int, length: int, batches: int):
  """Seconds per batch of random windows: (local memory map, bucket ranged reads)."""
  import fsspec
  import numpy as np
  local = np.load(store / 'train.text.tokens.npy', mmap_mode='r')
  with open(store / 'train.text.tokens.npy', 'rb') as f:   # where the .npy's data begin
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    header = f.tell()
  fs, path = fsspec.core.url_to_fs(url)
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(local) - length, size=(batches, rows))
  itemsize = local.dtype.itemsize

  begin = time.perf_counter()
  for row_starts in starts:
    batch = np.stack([local[s:s + length] for s in row_starts])
  local_seconds = (time.perf_counter() - begin) / batches

  begin = time.perf_counter()
  for row_starts in starts:
    blobs = fs.cat_ranges([path] * rows, [header + int(s) * itemsize for s in row_starts],
                          [header + (int(s) + length) * itemsize for s in row_starts])
    remote = np.stack([np.frombuffer(b, local.dtype) for b in blobs])
  bucket_seconds = (time.perf_counter() - begin) / batches
  np.testing.assert_array_equal(remote, batch)   # the last batch, read both ways
  return local_seconds, bucket_seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--copies', type=int, nargs='+', default=[1, 16])
  parser.add_argument('--tokenizers', nargs='+', default=['char', 'sentencepiece'])
  parser.add_argument('--rows', type=int, default=12)
  parser.add_argument('--length', type=int, default=65)
  parser.add_argument('--batches', type=int, default=100)
  args = parser.parse_args()
  text = SHAKESPEARE.read_bytes()
  results = []
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    with cloud.serve(scratch / 'server.log') as server:
      os.environ.update(cloud.environment(server))
      from transformer import storage
      bucket = f'gs://{server.make_bucket()}'
      for copies in args.copies:
        corpus = f'{bucket}/data/input-{copies}.txt'
        storage.path(corpus).write_bytes(text * copies)
        for tokenizer in args.tokenizers:
          name = f'{copies}-{tokenizer}'
          config = data_config(corpus, tokenizer)
          workdir = f'{bucket}/run-{name}'
          first, store = host(config, workdir, scratch / f'cache-{name}-0')
          other, _ = host(config, workdir, scratch / f'cache-{name}-1')
          published = storage.path(f'{bucket}/stores/{name}')
          begin = time.perf_counter()
          storage.upload_tree(store, published)
          uploaded = time.perf_counter() - begin
          begin = time.perf_counter()
          storage.download_tree(published, scratch / f'fetched-{name}')
          fetched = time.perf_counter() - begin
          store_bytes = sum(p.stat().st_size for p in store.iterdir())
          local, remote = batch_reads(store, f'{published}/train.text.tokens.npy',
                                      args.rows, args.length, args.batches)
          row = dict(corpus=f'{copies} x Tiny Shakespeare ({len(text) * copies / 2**20:.1f} '
                     'MiB)', tokenizer=tokenizer, store=store_bytes / 2**20, first=first,
                     other=other, uploaded=uploaded, fetched=fetched, local=local, remote=remote)
          results.append(row)
          print(row, file=sys.stderr, flush=True)
  print(f'{args.batches} batches of {args.rows} x {args.length} tokens per read figure')
  print('| corpus | tokenizer | store (MiB) | host 0 builds (s) | another host builds (s) | '
        'host 0 publishes the store (s) | another host fetches it (s) | batch from local '
        'store (ms) | batch from bucket (ms) |\n|---|---|---|---|---|---|---|---|---|')
  for r in results:
    print(f'| {r["corpus"]} | {r["tokenizer"]} | {r["store"]:.1f} | {r["first"]:.2f} | '
          f'{r["other"]:.2f} | {r["uploaded"]:.2f} | {r["fetched"]:.2f} | '
          f'{1e3 * r["local"]:.3f} | {1e3 * r["remote"]:.2f} |')
  for r in results:
    print(f'{r["corpus"]}, {r["tokenizer"]}: another host building / fetching '
          f'{r["other"] / r["fetched"]:.1f}x; a batch from the bucket / local '
          f'{r["remote"] / r["local"]:.0f}x')


if __name__ == '__main__':
  main()
