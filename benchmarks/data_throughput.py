"""Input-pipeline throughput on Multi30k en->de (packed training batches).

Builds the SentencePiece tokenizer and the data caches in a temporary workdir (the
first, "cold" build includes TFDS preparation and tokenizer training), then times
``next(train_iter)`` for a few batch shapes and prints tokens/s, counting the real
(non-pad) source and target tokens of each batch.

    python benchmarks/data_throughput.py [--multi30k PATH] [--batches 200]
"""

import argparse
import tempfile
import time
from pathlib import Path


from transformer.data.config import default_data_config


from transformer.data.datasets import get_datasets
from transformer.tasks import get_task

DEFAULT_PATH = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'multi30k'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--multi30k', default=str(DEFAULT_PATH))
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--batches', type=int, default=200)
  args = parser.parse_args()

  config = default_data_config()
  config.source, config.path = 'parallel', args.multi30k
  config.src_lang, config.tgt_lang = 'en', 'de'
  config.tokenizer, config.vocab_size = 'sentencepiece', args.vocab_size
  with tempfile.TemporaryDirectory() as workdir:
    rows_out = []
    for max_len, batch in [(64, 64), (64, 128), (128, 64), (128, 128)]:
      config.max_len = max_len
      start = time.perf_counter()
      ds = get_datasets(config, get_task('translation').data_needs(config), workdir=workdir,
                        global_batch_size=batch, seed=0, process_index=0, process_count=1)
      build_s = time.perf_counter() - start
      it = ds.train_iter()
      next(it)
      real = fill = 0.0
      start = time.perf_counter()
      for _ in range(args.batches):
        b = next(it)
        real += float((b['inputs'] > 0).sum() + b['weights'].sum())
        fill += float(b['weights'].mean())
      seconds = time.perf_counter() - start
      rows_out.append((max_len, batch, build_s, 1e3 * seconds / args.batches, real / seconds,
                       fill / args.batches))
    print(f'Multi30k train en->de, SentencePiece vocab {ds.vocab_size}, packed, '
          f'{args.batches} batches each')
    print(f'{"max_len":>7} {"batch":>5} {"build s":>8} {"ms/batch":>9} {"tokens/s":>12} {"target fill":>11}')
    for max_len, batch, build_s, ms, tps, fill in rows_out:
      print(f'{max_len:>7} {batch:>5} {build_s:>8.2f} {ms:>9.2f} {tps:>12,.0f} {fill:>11.1%}')
    print('(build s: the first row includes TFDS preparation and SentencePiece training;'
          ' later rows reuse the caches)')


if __name__ == '__main__':
  main()
