"""Text in, text out: translate and generate with a model, its parameters and tokenizer.

    translate_texts(model, params, tokenizer, ['A dog runs.'], beam_size=4)
    generate_text(model, params, tokenizer, 'ROMEO:', max_new_tokens=200, top_k=40)

`transformer.train.run.load_run(workdir)` gives all three from a trained run.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from transformer import decode
from transformer.models import DecoderLM, Transformer


def _bucket(length: int, multiple: int = 8) -> int:
  """Rounds lengths up so that a few shapes (hence compilations) cover every batch."""
  return -(-length // multiple) * multiple


def translate_texts(model: Transformer, params: Any, tokenizer: Any, texts: Sequence[str], *,
                    beam_size: int = 4, alpha: float = 0.6, batch_size: int = 64,
                    max_extra_len: int = 50) -> list[str]:
  """Translations of `texts` (beam search; `beam_size=1` is greedy), in input order.

  Sources are encoded (+ eos), truncated to the model's `max_len`, sorted by length and
  batched in length buckets; outputs are at most input length + `max_extra_len` tokens.
  """
  if not isinstance(model, Transformer):
    raise ValueError(f'translation needs an encoder-decoder Transformer, not {type(model).__name__}')
  tok, max_len = tokenizer, model.config.max_len
  encoded = [(tok.encode(t) + [tok.eos_id])[:max_len] for t in texts]
  order = np.argsort([len(e) for e in encoded], kind='stable')
  results: list[str] = [''] * len(texts)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = min(_bucket(max(len(encoded[i]) for i in rows)), max_len)
    src = np.zeros((batch_size, width), np.int32)  # full batches: one compiled shape
    for r, i in enumerate(rows):
      src[r, :len(encoded[i])] = encoded[i]
    decode_len = min(width + max_extra_len, max_len)
    if beam_size == 1:
      out = decode.translate_greedy(model, params, jnp.asarray(src),
                                    max_decode_len=decode_len, eos_id=tok.eos_id,
                                    bos_id=tok.bos_id)
    else:
      beams, _ = decode.translate_beam(model, params, jnp.asarray(src),
                                       beam_size=beam_size, alpha=alpha,
                                       max_decode_len=decode_len, eos_id=tok.eos_id,
                                       bos_id=tok.bos_id)
      out = beams[:, 0]
    out = np.asarray(out)
    for r, i in enumerate(rows):
      results[i] = tok.decode(out[r].tolist())
  return results


def generate_text(model: DecoderLM, params: Any, tokenizer: Any, prompt: str, *,
                  max_new_tokens: int = 200,
                  temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int = 0, num_samples: int = 1
                  ) -> list[str]:
  """Continuations of `prompt` from a decoder-only run (sampling; temperature 0 = greedy).

  Past the model's context (`max_len` positions), generation slides a window: it keeps
  the newest half-context of tokens as the next prompt, as nanoGPT crops its context.
  """
  if not isinstance(model, DecoderLM):
    raise ValueError(f'generation needs a DecoderLM, not {type(model).__name__}')
  tok, max_len = tokenizer, model.config.max_len
  ids = ([tok.bos_id] if getattr(tok, 'bos_id', None) is not None else []) + tok.encode(prompt)
  if not ids:
    raise ValueError('the prompt is empty and the tokenizer has no bos token to start from')
  if len(ids) > max_len:
    raise ValueError(f'the prompt is {len(ids)} tokens; the model reads at most '
                     f'max_len={max_len}')
  eos = tok.eos_id if getattr(tok, 'eos_id', None) is not None else -1
  rows = np.tile(np.asarray(ids, np.int32), (num_samples, 1))  # [samples, length]
  rng = jax.random.PRNGKey(seed)
  remaining = max_new_tokens
  window = max(max_len // 2, 1)
  while remaining > 0:
    length = rows.shape[1]
    # generate() needs prompt + new - 1 <= max_len positions.
    keep = length if length + remaining - 1 <= max_len else min(length, max_len - window)
    step_tokens = min(remaining, max_len - keep + 1)
    rng, key = jax.random.split(rng)
    new = decode.generate(model, params, jnp.asarray(rows[:, length - keep:]),
                          max_new_tokens=step_tokens, rng=key, temperature=temperature,
                          top_k=top_k, top_p=top_p, eos_id=eos)
    rows = np.concatenate([rows, np.asarray(new)], axis=1)
    remaining -= step_tokens
    if eos >= 0 and (rows[:, len(ids):] == eos).any(axis=1).all():
      break
  return [tok.decode(row[len(ids):].tolist()) for row in rows]
