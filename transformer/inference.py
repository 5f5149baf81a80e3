"""Decoding with our models: the KV-cache wiring for `transformer.decode`'s search, and
text in, text out.

    generate(model, params, prompt_tokens, max_new_tokens=50)          # DecoderLM, sampling
    translate(model, params, src_tokens, beam_size=4, alpha=0.6)       # Transformer
    translate_beam(model, params, src_tokens, beam_size=4)              # every beam, scored
    translate_texts(model, params, tokenizer, ['A dog runs.'], beam_size=4)
    generate_text(model, params, tokenizer, 'ROMEO:', max_new_tokens=200, top_k=40)

`generate` (and `greedy_uncached`, the cache-free reference) serve `DecoderLM`;
`translate` (beam search's best, or greedy with beam 1), `translate_greedy` and
`translate_beam` the encoder-decoder `Transformer`, whose encoder runs once per call.
Prompts of different lengths share a batch by LEFT padding (`left_pad`): every row's last
column is then a real token, and the model's default positions count only real tokens, so
a padded row decodes exactly as it would alone. Every loop calls the models' `decode_step`
on their stacked KV cache, so a model with scanned layers decodes as it trains: one
scanned layer step, whatever the depth. Special token ids come from
`transformer.data.tokenizers`; a trained run's tokenizer
(`transformer.train.trained_run.load_run`) gives the ones it was trained with.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from transformer import decode
from transformer.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from transformer.errors import UserError
from transformer.models import DecoderLM, Transformer, grow_cache

# The paper's output limit (section 6.1): input length + 50 tokens.
MAX_EXTRA_LEN = 50


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = PAD_ID,
             length: int | None = None) -> np.ndarray:
  """Token lists of different lengths -> one left-padded int32 array [B, P]."""
  length = max(len(p) for p in prompts) if length is None else length
  out = np.full((len(prompts), length), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    if len(prompt):
      out[row, length - len(prompt):] = prompt[-length:]
  return out


def _check_length(model, length: int, what: str) -> None:
  cfg = model.config
  if cfg.position != 'rope' and length > cfg.max_len:
    raise ValueError(f'{what} needs {length} positions but the model encodes only '
                     f'max_len={cfg.max_len}')


def _without_pad(logits: Float[Array, "B V"], pad_id: int, value: float = -jnp.inf
                 ) -> Float[Array, "B V"]:
  """Pad is never generated: it would be masked as a key, and it marks "after eos".

  A negative pad id means the model has none (character LMs use every id).
  """
  if pad_id < 0:
    return logits
  return logits.at[:, pad_id].set(value)


def _for_sampling(score_fn: decode.ScoreFn, pad_id: int) -> decode.ScoreFn:
  """Logits with pad forbidden."""
  def score(tokens, state):
    logits, state = score_fn(tokens, state)
    return _without_pad(logits, pad_id), state
  return score


def _for_beam_search(score_fn: decode.ScoreFn, pad_id: int) -> decode.ScoreFn:
  """The model's log-probabilities (normalised over the whole vocabulary, so that beam
  scores are the model's log P(Y)), with pad forbidden."""
  def score(tokens, state):
    logits, state = score_fn(tokens, state)
    return _without_pad(jax.nn.log_softmax(logits, axis=-1), pad_id, decode.NEG_INF), state
  return score


def _lm_score_fn(model, params) -> decode.ScoreFn:
  def score(tokens, cache):
    logits, cache = model.apply(params, tokens[:, None], cache, method=model.decode_step)
    return logits[:, -1], cache
  return score


def _prefilled_lm_cache(model, params, prompt_tokens, max_length):
  """A cache holding all but the last prompt token (one prefill call)."""
  batch_size, prompt_length = prompt_tokens.shape
  cache = model.init_cache(batch_size, max_length)
  if prompt_length > 1:
    _, cache = model.apply(params, prompt_tokens[:, :-1], cache, method=model.decode_step)
  return cache


def beam_cache(cache: dict[str, Any], beam_size: int) -> dict[str, Any]:
  """A model's decoding cache for B rows (empty or prefilled) -> one for B * beam beams
  whose keys and values never move (`follow_beams`): every beam starts from row b's
  copy, and `beam_slots` records which beam row holds each position of each beam."""
  batch_size, max_length = cache['valid'].shape
  # Row b -> its beams; keys [..., B, K, H, S] and values [..., B, K, S, H], stacked or not.
  repeat = lambda tree, axis: jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis), tree)
  return {**cache, 'valid': repeat(cache['valid'], 0), 'key': repeat(cache['key'], -4),
          'value': repeat(cache['value'], -4),
          'beam_slots': jnp.zeros((batch_size, beam_size, max_length), jnp.int32)}


def follow_beams(cache: dict[str, Any], parents: Int[Array, "B beam"]) -> dict[str, Any]:
  """`beam_search`'s `follow` for a `beam_cache`: new beam w extends old beam
  `parents[b, w]` by inheriting its slot table and valid mask (B * beam * S_max entries);
  the keys and values stay in the rows that wrote them (gathering them instead moves the
  whole cache at every step)."""
  slots = jnp.take_along_axis(cache['beam_slots'], parents[:, :, None], axis=1)
  valid = decode.gather_beams(cache['valid'], parents, parents.shape[1])
  return {**cache, 'beam_slots': slots, 'valid': valid}


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'top_k', 'eos_id'))
def generate(model, params, prompt_tokens: Int[Array, "B P"], *, max_new_tokens: int,
             rng: PRNGKeyArray | None = None, temperature: float | Float[Array, ""] = 1.0,
             top_k: int | None = None, top_p: float | Float[Array, ""] | None = None,
             eos_id: int = EOS_ID) -> Int[Array, "B max_new_tokens"]:
  """Samples a continuation of each prompt from a `DecoderLM`, in one compiled loop.

  Args:
    prompt_tokens: [B, P], LEFT-padded with 0 (`left_pad`); every row needs at least one
      real token.
    max_new_tokens: how many tokens to produce (static).
    rng: PRNG key; the same key gives the same samples. None means PRNGKey(0) (fine for
      greedy decoding, where it is unused).
    temperature, top_k, top_p: see `sample_logits`; temperature 0 is greedy.

  The first P - 1 prompt tokens are prefilled in one model call; the prompt's last token is
  the loop's first input, and each sampled token the next one. Rows stop after `eos_id`.
  The pad id is never generated (its logit is set to -inf), here and in all model entry
  points below.

  Returns:
    the new tokens [B, max_new_tokens] (eos included, pad 0 after it).
  """
  prompt_length = prompt_tokens.shape[1]
  # Slots for every fed token: the prompt, then all new tokens but the last.
  max_length = prompt_length + max_new_tokens - 1
  _check_length(model, max_length, 'generate')
  cache = _prefilled_lm_cache(model, params, prompt_tokens, max_length)
  score = _for_sampling(_lm_score_fn(model, params), model.config.pad_id)
  return decode.sample_loop(score, cache, prompt_tokens[:, -1],
                     num_steps=max_new_tokens, rng=rng, temperature=temperature,
                     top_k=top_k, top_p=top_p, eos_id=eos_id, pad_id=model.config.pad_id)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'eos_id'))
def greedy_uncached(model, params, prompt_tokens: Int[Array, "B P"], *, max_new_tokens: int,
                    eos_id: int = EOS_ID) -> Int[Array, "B max_new_tokens"]:
  """Greedy `generate` without a cache: the reference, and the benchmark's baseline.

  Each step re-runs the full forward pass over a fixed [B, P + max_new_tokens] buffer
  (prompt, tokens so far, then pads, which are masked and causally invisible) and reads the
  logits of the last filled column. Same contract as `generate` with temperature 0.
  """
  # Left-padded rows without a cache: the dense mask of the einsum path (a fused kernel's
  # sequence lengths would assume right padding).
  model = model.clone(config=model.config.replace(attention_impl=None))
  batch_size, prompt_length = prompt_tokens.shape
  pad_id = model.config.pad_id
  _check_length(model, prompt_length + max_new_tokens, 'greedy_uncached')
  buffer = jnp.concatenate(
      [prompt_tokens.astype(jnp.int32),
       jnp.full((batch_size, max_new_tokens), pad_id, jnp.int32)], axis=1)

  def body(step, carry):
    buffer, finished = carry
    logits = model.apply(params, buffer)
    column = prompt_length + step - 1
    logits = lax.dynamic_index_in_dim(logits, column, axis=1, keepdims=False)
    token = decode.greedy(_without_pad(logits, pad_id))
    token = jnp.where(finished, pad_id, token)
    buffer = lax.dynamic_update_slice(buffer, token[:, None], (0, column + 1))
    return buffer, finished | (token == eos_id)

  buffer, _ = lax.fori_loop(0, max_new_tokens, body,
                            (buffer, jnp.zeros((batch_size,), jnp.bool_)))
  return buffer[:, prompt_length:]


def _default_decode_len(model, src_tokens, max_decode_len):
  """The paper's limit (input length + MAX_EXTRA_LEN), within the model's positions."""
  if max_decode_len is None:
    max_decode_len = src_tokens.shape[1] + MAX_EXTRA_LEN
    if model.config.position != 'rope':
      max_decode_len = min(max_decode_len, model.config.max_len)
  _check_length(model, max_decode_len, 'decoding')
  return max_decode_len


def _translation_score_fn(model, params, memory) -> decode.ScoreFn:
  """Decoder steps reading the source's cross-attention keys/values computed once.

  `memory` stays out of the loop state: it is the same for every beam of a row, so it
  needs no following when beams are reordered. For beam search it keeps its B rows: each
  source's beams read it together (`shared_memory_attention`).
  """
  def score(tokens, cache):
    logits, cache = model.apply(params, tokens[:, None], cache, memory,
                                method=model.decode_step)
    return logits[:, -1], cache
  return score


def _encode(model, params, src_tokens):
  """Runs the encoder once: the decoder layers' cross-attention keys/values."""
  return model.apply(params, src_tokens, method=model.decoder_memory)


def _beam_stages(max_decode_len: int) -> tuple[int, ...]:
  """Beam search's first half of the steps runs on a cache of half the length.

  Each decoding step's attention reads every cache slot, filled or not; the first half
  of the steps needs only half of them (and most searches end there). Decoding 80 tokens
  at the multi30k size: 1.82x -> 2.13x Flax wmt's speed (`benchmarks/flax_wmt.py --parts
  beam`, before the shared memory); a second stage compiles the step again, worth it from
  ~32 steps.
  """
  return (max_decode_len // 2,) if max_decode_len >= 32 else ()


def _search_inputs(model, params, src_tokens, *, greedy: bool, max_decode_len: int | None,
                   bos_id: int):
  """What a search over the encoder-decoder starts from: (scorer, empty cache, first
  tokens, T, stages).

  The encoder runs once; the scorer reads its cross-attention keys and values and gives
  logits for greedy decoding, log-probabilities for beam search. Beam search's cache has
  room for the first half of the steps at first (`_beam_stages`).
  """
  max_decode_len = _default_decode_len(model, src_tokens, max_decode_len)
  memory = _encode(model, params, src_tokens)
  scores = _for_sampling if greedy else _for_beam_search
  score = scores(_translation_score_fn(model, params, memory), model.config.pad_id)
  stages = () if greedy else _beam_stages(max_decode_len)
  cache = model.init_cache(src_tokens.shape[0], stages[0] if stages else max_decode_len)
  first = jnp.full((src_tokens.shape[0],), bos_id, jnp.int32)
  return score, cache, first, max_decode_len, stages


@functools.partial(jax.jit,
                   static_argnames=('model', 'beam_size', 'max_decode_len', 'eos_id', 'bos_id'))
def translate(model, params, src_tokens: Int[Array, "B S"], *, beam_size: int = 4,
              alpha: float | Float[Array, ""] = 0.6, max_decode_len: int | None = None,
              eos_id: int = EOS_ID, bos_id: int = BOS_ID) -> Int[Array, "B T"]:
  """The best translation of each source: beam search's best beam (paper 6.1: beam 4,
  alpha 0.6), or greedy decoding when `beam_size` is 1 (`alpha` unused).

  Args:
    src_tokens: [B, S] source tokens, padded with 0 (either side).
    max_decode_len: T, the most target tokens; default S + MAX_EXTRA_LEN (paper 6.1),
      capped at the model's max_len.

  Returns:
    target tokens [B, T] without bos (eos included, pad 0 after it).
  """
  score, cache, first, max_decode_len, stages = _search_inputs(
      model, params, src_tokens, greedy=beam_size == 1, max_decode_len=max_decode_len,
      bos_id=bos_id)
  return decode.search(score, cache, first, beam_size=beam_size,
                       max_decode_len=max_decode_len, alpha=alpha, eos_id=eos_id,
                       pad_id=model.config.pad_id, to_beams=beam_cache, follow=follow_beams,
                       stages=stages, grow=grow_cache)


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_len', 'eos_id', 'bos_id'))
def translate_greedy(model, params, src_tokens: Int[Array, "B S"], *,
                     max_decode_len: int | None = None, eos_id: int = EOS_ID,
                     bos_id: int = BOS_ID) -> Int[Array, "B T"]:
  """Greedy decoding with the encoder-decoder `Transformer`: `translate` with beam 1."""
  return translate(model, params, src_tokens, beam_size=1, max_decode_len=max_decode_len,
                   eos_id=eos_id, bos_id=bos_id)


@functools.partial(jax.jit,
                   static_argnames=('model', 'beam_size', 'max_decode_len', 'eos_id', 'bos_id'))
def translate_beam(model, params, src_tokens: Int[Array, "B S"], *, beam_size: int = 4,
                   alpha: float | Float[Array, ""] = 0.6, max_decode_len: int | None = None,
                   eos_id: int = EOS_ID, bos_id: int = BOS_ID
                   ) -> tuple[Int[Array, "B beam T"], Float[Array, "B beam"]]:
  """Beam search with the encoder-decoder `Transformer` (paper 6.1: beam 4, alpha 0.6),
  every beam with its score.

  The encoder runs once for B rows, and each source's beams read its cross-attention keys
  and values together. The decoder cache has B * beam rows and stays in place: beams
  follow their parents through its slot table (`beam_cache`, `follow_beams`); it has room
  for the first half of the steps at first, and grows for the second (`_beam_stages`).

  Returns:
    tokens [B, beam, T] without bos (pad 0 after eos) and scores [B, beam]
    (log P / lp), best first; T = max_decode_len, default S + MAX_EXTRA_LEN capped at
    max_len.
  """
  score, cache, first, max_decode_len, stages = _search_inputs(
      model, params, src_tokens, greedy=False, max_decode_len=max_decode_len, bos_id=bos_id)
  return decode.beam_search(score, beam_cache(cache, beam_size), first,
                            beam_size=beam_size, max_decode_len=max_decode_len, alpha=alpha,
                            eos_id=eos_id, pad_id=model.config.pad_id, follow=follow_beams,
                            stages=stages, grow=grow_cache)


def _bucket(length: int, multiple: int = 8) -> int:
  """Rounds lengths up so that a few shapes (hence compilations) cover every batch."""
  return -(-length // multiple) * multiple


def translate_texts(model: Transformer, params: Any, tokenizer: Any, texts: Sequence[str], *,
                    beam_size: int = 4, alpha: float = 0.6, batch_size: int = 64,
                    max_extra_len: int = MAX_EXTRA_LEN) -> list[str]:
  """Translations of `texts` (beam search; `beam_size=1` is greedy), in input order.

  Sources are encoded (+ eos), truncated to the model's `max_len`, sorted by length and
  batched in length buckets; outputs are at most input length + `max_extra_len` tokens.
  """
  if not isinstance(model, Transformer):
    raise UserError('translation needs an encoder-decoder Transformer, not '
                    f'{type(model).__name__}')
  tok, max_len = tokenizer, model.config.max_len
  pad_id = max(model.config.pad_id, 0)   # (a model without a pad id cannot mask any)
  encoded = [(tok.encode(t) + [tok.eos_id])[:max_len] for t in texts]
  order = np.argsort([len(e) for e in encoded], kind='stable')
  results: list[str] = [''] * len(texts)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = min(_bucket(max(len(encoded[i]) for i in rows)), max_len)
    src = np.full((batch_size, width), pad_id, np.int32)  # full batches: one compiled shape
    for r, i in enumerate(rows):
      src[r, :len(encoded[i])] = encoded[i]
    decode_len = min(width + max_extra_len, max_len)
    out = np.asarray(translate(model, params, jnp.asarray(src), beam_size=beam_size,
                               alpha=alpha, max_decode_len=decode_len, eos_id=tok.eos_id,
                               bos_id=tok.bos_id))
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
  the newest half-context of tokens as the next prompt, as nanoGPT crops its context (a
  prompt longer than the context is read from its newest tokens likewise).
  """
  if not isinstance(model, DecoderLM):
    raise UserError(f'generation needs a DecoderLM, not {type(model).__name__}')
  tok, max_len = tokenizer, model.config.max_len
  ids = ([tok.bos_id] if getattr(tok, 'bos_id', None) is not None else []) + tok.encode(prompt)
  if not ids:
    raise UserError('the prompt is empty and the tokenizer has no bos token to start from')
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
    new = generate(model, params, jnp.asarray(rows[:, length - keep:]),
                   max_new_tokens=step_tokens, rng=key, temperature=temperature,
                   top_k=top_k, top_p=top_p, eos_id=eos)
    rows = np.concatenate([rows, np.asarray(new)], axis=1)
    remaining -= step_tokens
    if eos >= 0 and (rows[:, len(ids):] == eos).any(axis=1).all():
      break
  return [tok.decode(row[len(ids):].tolist()) for row in rows]
