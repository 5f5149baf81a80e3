"""Decoding speed: cached versus uncached greedy generation, and beam-search translation.

    python benchmarks/decode_speed.py [--batch_size 8] [--new_tokens 256] [--repeats 3]

Prints one table. Models have random weights (speed does not depend on them); eos is set
to an id that never occurs, so every row decodes the full length and the figures are the
worst case. Each function is compiled ahead of time, so the timings exclude compilation.

- LM: a DecoderLM of 4 layers, width 256, batch 8, 16-token prompts, 256 new tokens.
  "cached" is `inference.generate` (prefill, then one token per step against the KV cache);
  "uncached" is `inference.greedy_uncached`, which re-runs the full forward pass every step
  over a fixed [B, prompt + 256] buffer (a jitted loop needs a static shape; a growing
  sequence would average half that length but recompile at every step).
- Translation: a Transformer of 4 + 4 layers, width 256, vocabulary 8192, on source
  sentences of 20-30 tokens (../shared/data/multi30k/test.en cut into 2-byte tokens when
  present, random otherwise), padded to 30; beam 4, alpha 0.6, max length = source
  length + 50 = 80 (paper 6.1), and greedy for comparison.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import transformer as tf
from transformer import inference

NEVER = -1  # an eos id no token equals
MULTI30K = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'multi30k' / 'test.en'
SPECIAL = 3  # pad, bos and eos come first
MT_VOCAB = 8192


def timed(run, repeats: int) -> float:
  """Best wall time of `repeats` calls of `run()` (seconds), waiting for the device."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best


def pair_tokens(line: str, vocab_size: int) -> list[int]:
  """A crude subword tokenizer for realistic lengths: one token per two bytes."""
  data = line.strip().encode('utf-8')
  return [SPECIAL + int.from_bytes(data[i:i + 2], 'big') % (vocab_size - SPECIAL)
          for i in range(0, len(data), 2)]


def source_sentences(count: int, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, str]:
  """[count, 30] right-padded tokens of sentences of 20-30 tokens."""
  rows = []
  if MULTI30K.exists():
    rows = [pair_tokens(line, vocab_size)
            for line in MULTI30K.read_text(encoding='utf-8').splitlines()]
    rows = [row for row in rows if 20 <= len(row) <= 30]
  source = f'multi30k test.en, 2-byte tokens ({len(rows)} sentences of 20-30 tokens)'
  rng = np.random.default_rng(seed)
  if len(rows) < count:
    source = 'random tokens'
    rows = [list(rng.integers(SPECIAL, vocab_size, rng.integers(20, 31)))
            for _ in range(count)]
  rows = [rows[i] for i in rng.permutation(len(rows))[:count]]
  out = np.zeros((count, 30), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out, source


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--prompt_length', type=int, default=16)
  parser.add_argument('--sentences', type=int, default=32, help='translation batch size')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--check', action=argparse.BooleanOptionalAction, default=True,
                      help='compare cached and uncached tokens (one more uncached run)')
  args = parser.parse_args()
  rng = jax.random.PRNGKey(0)
  rows = []

  # Decoder-only LM: cached versus uncached greedy decoding.
  lm_config = tf.tiny(vocab_size=1024, d_model=256, num_heads=4, mlp_dim=1024, num_layers=4,
                      max_len=512)
  lm = tf.DecoderLM(lm_config)
  prompt = jax.random.randint(rng, (args.batch_size, args.prompt_length), 3, 1024)
  lm_params = lm.init(rng, prompt)
  new_tokens = args.batch_size * args.new_tokens
  cached = inference.generate.lower(lm, lm_params, prompt, max_new_tokens=args.new_tokens,
                                    temperature=0.0, eos_id=NEVER).compile()
  uncached = inference.greedy_uncached.lower(lm, lm_params, prompt,
                                             max_new_tokens=args.new_tokens,
                                             eos_id=NEVER).compile()
  # Compiled functions take the dynamic arguments as they were lowered.
  run_cached = lambda: cached(lm_params, prompt, temperature=0.0)
  run_uncached = lambda: uncached(lm_params, prompt)
  cached_seconds = timed(run_cached, args.repeats)
  uncached_seconds = timed(run_uncached, 1)  # slow; one run
  for name, seconds in (('cached (KV cache)', cached_seconds),
                        ('uncached (full forward each step)', uncached_seconds)):
    rows.append((f'LM greedy, {name}', f'{new_tokens / seconds:,.0f} tokens/s',
                 f'{seconds:.2f} s for {args.batch_size} x {args.new_tokens} tokens'))
  # Greedy either way, so the tokens must agree: the two measure the same work.
  same = bool((run_cached() == run_uncached()).all()) if args.check else None

  # Encoder-decoder: beam search and greedy translation.
  mt_config = tf.tiny(vocab_size=MT_VOCAB, d_model=256, num_heads=4, mlp_dim=1024, num_layers=4)
  mt = tf.Transformer(mt_config)
  src, source = source_sentences(args.sentences, MT_VOCAB)
  src = jnp.asarray(src)
  mt_params = mt.init(rng, src, src[:, :8])
  beam = inference.translate_beam.lower(mt, mt_params, src, beam_size=4, alpha=0.6,
                                        eos_id=NEVER).compile()
  greedy = inference.translate_greedy.lower(mt, mt_params, src, eos_id=NEVER).compile()
  max_len = src.shape[1] + inference.MAX_EXTRA_LEN
  for name, run in (('beam 4, alpha 0.6', lambda: beam(mt_params, src, alpha=0.6)),
                    ('greedy', lambda: greedy(mt_params, src))):
    seconds = timed(run, args.repeats)
    rows.append((f'translation, {name}', f'{args.sentences / seconds:,.1f} sentences/s',
                 f'{seconds:.2f} s for {args.sentences} sentences x {max_len} steps'))

  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); '
        f'sources: {source}')
  width = max(len(r[0]) for r in rows)
  print(f'{"decoding":<{width}}  {"throughput":>20}  detail')
  for name, throughput, detail in rows:
    print(f'{name:<{width}}  {throughput:>20}  {detail}')
  agreement = {None: 'not compared', True: 'agree', False: 'DIFFER'}[same]
  print(f'cached is {uncached_seconds / cached_seconds:.1f}x faster than uncached; their '
        f'tokens {agreement}')


if __name__ == '__main__':
  main()
