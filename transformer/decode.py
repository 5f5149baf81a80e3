"""The search: samplers, the sampling loop, and beam search with a length penalty.

Everything here is a pure function over a scoring callback
`(last_tokens [B], state) -> (logits or log-probs [B, V], state)` and knows nothing of our
models: `transformer.inference` wires a model's KV cache in as the state. A decoding loop
is a `lax.while_loop` whose carry holds that state; it compiles once for given static
lengths.

- Samplers act on logits [B, V]: `greedy`, `top_k_mask`, `top_p_mask` and
  `sample_logits` (temperature, then top-k, then top-p; temperature 0 is greedy).
- `sample_loop` feeds each sampled token back; `beam_search` keeps the W best hypotheses
  under GNMT's length penalty. Both are testable with hand-built scorers. `search` is
  either one's most likely continuation (beam 1: greedy).

Extra shape letter: `beam` (the beam width W) in `[B, beam, T]`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

# Large but finite, so that arithmetic on dead beams never makes inf - inf = NaN.
NEG_INF = -1.0e7

State = Any
ScoreFn = Callable[[Int[Array, "B"], State], tuple[Float[Array, "B V"], State]]


# ---------------------------------------------------------------------------------------
# Samplers: pure functions on logits [..., V].
# ---------------------------------------------------------------------------------------

def greedy(logits: Float[Array, "B V"]) -> Int[Array, "B"]:
  """The most likely token (the first one on ties)."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def top_k_mask(logits: Float[Array, "B V"], k: int) -> Float[Array, "B V"]:
  """Keeps exactly the k largest logits (ties broken by index); the rest become -inf."""
  if k < 1:
    raise ValueError(f'top_k must be >= 1, got {k}')
  k = min(k, logits.shape[-1])
  _, indices = lax.top_k(logits, k)
  keep = jnp.put_along_axis(jnp.zeros(logits.shape, jnp.bool_), indices, True, axis=-1,
                            inplace=False)
  return jnp.where(keep, logits, -jnp.inf)


def top_p_mask(logits: Float[Array, "B V"], p: float | Float[Array, ""]) -> Float[Array, "B V"]:
  """Nucleus filtering: keeps the smallest set of most likely tokens whose probability
  reaches p (Holtzman et al., 2019); the rest become -inf.

  A token is kept when the probability of the tokens strictly more likely than it is
  below p, so the most likely token is always kept and p >= 1 keeps everything.
  """
  order = jnp.argsort(-logits, axis=-1)  # descending, stable
  sorted_probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = mass_before < p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.put_along_axis(jnp.zeros(logits.shape, jnp.bool_), order, keep_sorted, axis=-1,
                            inplace=False)
  return jnp.where(keep, logits, -jnp.inf)


def sample_logits(rng: PRNGKeyArray, logits: Float[Array, "B V"], *,
                  temperature: float | Float[Array, ""] = 1.0, top_k: int | None = None,
                  top_p: float | Float[Array, ""] | None = None) -> Int[Array, "B"]:
  """Samples one token per row from softmax(logits / temperature), restricted to the top k
  and then to the nucleus of mass top_p (both of the tempered distribution).

  `temperature` may be traced; 0 means greedy (and small values approach it). `top_k` is
  static (None: no restriction); `top_p` may be traced (None: no restriction).
  """
  temperature = jnp.asarray(temperature, jnp.float32)
  scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  if top_k is not None:
    scaled = top_k_mask(scaled, top_k)
  if top_p is not None:
    scaled = top_p_mask(scaled, top_p)
  sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy(logits))


# ---------------------------------------------------------------------------------------
# The generic sampling loop.
# ---------------------------------------------------------------------------------------

def sample_loop(score_fn: ScoreFn, state: State, first_tokens: Int[Array, "B"], *,
                num_steps: int, rng: PRNGKeyArray | None = None,
                temperature: float | Float[Array, ""] = 0.0, top_k: int | None = None,
                top_p: float | Float[Array, ""] | None = None, eos_id: int,
                pad_id: int) -> Int[Array, "B T"]:
  """Feeds `first_tokens`, then each sampled token, to `score_fn` for `num_steps` steps.

  Step t computes `logits, state = score_fn(last_tokens, state)` and samples token t with
  `fold_in(rng, t)`. A row that has emitted `eos_id` is finished: it is fed and emits
  `pad_id` from then on. The loop (a `lax.while_loop`) exits early once every row is done.

  Returns the T = num_steps sampled tokens [B, T] (eos included, pad after it).
  """
  if rng is None:
    rng = jax.random.PRNGKey(0)  # unused by greedy decoding (temperature 0)
  batch_size = first_tokens.shape[0]

  def cond(carry):
    step, _, finished, _, _ = carry
    return (step < num_steps) & ~finished.all()

  def body(carry):
    step, last, finished, out, state = carry
    logits, state = score_fn(last, state)
    token = sample_logits(jax.random.fold_in(rng, step), logits, temperature=temperature,
                          top_k=top_k, top_p=top_p)
    token = jnp.where(finished, pad_id, token)
    out = lax.dynamic_update_slice(out, token[:, None], (0, step))
    return step + 1, token, finished | (token == eos_id), out, state

  out = jnp.full((batch_size, num_steps), pad_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), first_tokens.astype(jnp.int32),
           jnp.zeros((batch_size,), jnp.bool_), out, state)
  return lax.while_loop(cond, body, carry)[3]


# ---------------------------------------------------------------------------------------
# Beam search (Wu et al., 2016, "GNMT"; the paper's section 6.1 uses beam 4, alpha 0.6).
# ---------------------------------------------------------------------------------------

def length_penalty(length: Int[Array, "..."] | int, alpha: float | Float[Array, ""]
                   ) -> Float[Array, "..."]:
  """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha; a hypothesis scores log P(Y) / lp(Y)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_to_beams(tree: Any, beam_size: int) -> Any:
  """Repeats every leaf with a batch axis [B, ...] to [B * beam, ...] (row b's beams are
  rows b * beam ... b * beam + beam - 1); scalars (the cache index) are left alone."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0),
                      tree)


def gather_beams(tree: Any, beam_indices: Int[Array, "B new_beam"], beam_size: int) -> Any:
  """Selects beams from every leaf [B * beam, ...] -> [B * new_beam, ...]; scalars pass."""
  batch_size = beam_indices.shape[0]
  flat = (jnp.arange(batch_size)[:, None] * beam_size + beam_indices).reshape(-1)
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else x[flat], tree)


def _take(x: Array, indices: Int[Array, "B k"]) -> Array:
  """x [B, n, ...] -> x[b, indices[b, j], ...] as [B, k, ...]."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


def beam_search(score_fn: ScoreFn, state: State, first_tokens: Int[Array, "B"], *,
                beam_size: int, max_decode_len: int, alpha: float | Float[Array, ""] = 0.6,
                eos_id: int, pad_id: int,
                follow: Callable[[State, Int[Array, "B beam"]], State] | None = None,
                stages: tuple[int, ...] = (),
                grow: Callable[[State, int], State] | None = None
                ) -> tuple[Int[Array, "B beam T"], Float[Array, "B beam"]]:
  """Beam search over any scoring function, with GNMT's length penalty.

  Args:
    score_fn: `(last_tokens [B * beam], state) -> (log_probs [B * beam, V], state)`.
      Rows are beams: row b * beam + w is beam w of batch row b.
    state: the initial state, already expanded to B * beam rows (`expand_to_beams`).
    first_tokens: [B], fed at the first step (bos, or a prompt's last token).
    beam_size: W, the number of hypotheses kept per row.
    max_decode_len: T, the most tokens a hypothesis may have (eos included).
    alpha: length-penalty exponent; 0 ranks by log-probability alone.
    follow: `(state, parents [B, beam]) -> state`, how the state follows the beams kept
      after each step: new beam w extends old beam `parents[b, w]`. Default
      `gather_beams`: every state leaf with a leading axis is [B * beam, ...] and is
      gathered by beam (so a KV cache follows its beam); scalar leaves pass through.
    stages, grow: step counts at which the loop stops to resize its state with
      `grow(state, length)` before going on, `length` being the next stage's end (or
      `max_decode_len`). A state sized for the steps so far (a KV cache of `stages[0]`
      slots at first) makes the early steps cheaper; each stage compiles the step anew.

  Each step ranks the extensions of the W alive beams and takes the 2W best. Those among
  the W best that end in `eos_id` are finished: they move to the finished set (the W best
  so far) with score log P(Y) / lp(|Y|), |Y| counting the tokens including eos, and are
  never extended. The W best that do not end stay alive, so the beam never shrinks.
  The loop stops at T tokens, or once no alive beam can still beat the worst of W finished
  hypotheses (log P only falls as it grows, so log P / lp(T) bounds an alive beam).

  Returns:
    tokens [B, beam, T] (without `first_tokens`; `pad_id` after eos) and scores [B, beam],
    best first. Rows with fewer than W finished hypotheses are filled with the best
    unfinished ones, scored with their current length.
  """
  batch_size, width = first_tokens.shape[0], beam_size
  positions = jnp.arange(max_decode_len)
  if follow is None:
    follow = lambda state, parents: gather_beams(state, parents, width)

  def cond(carry):
    step, _, alive_log_probs, _, finished_scores, finished_flags, _ = carry
    best_alive = alive_log_probs[:, 0] / length_penalty(max_decode_len, alpha)  # [B]
    worst_finished = jnp.where(finished_flags.all(axis=1),
                               finished_scores.min(axis=1), NEG_INF)  # [B]
    return (step < max_decode_len) & ~(worst_finished >= best_alive).all()

  def body(carry):
    (step, alive_seqs, alive_log_probs, finished_seqs, finished_scores, finished_flags,
     state) = carry
    last = alive_seqs[:, :, jnp.maximum(step - 1, 0)]  # [B, beam]
    last = jnp.where(step == 0, first_tokens[:, None], last)
    log_probs, state = score_fn(last.reshape(-1), state)  # [B * beam, V]
    vocab_size = log_probs.shape[-1]
    log_probs = log_probs.astype(jnp.float32).reshape(batch_size, width, vocab_size)
    candidates = (alive_log_probs[:, :, None] + log_probs).reshape(batch_size, -1)

    # The 2W best extensions: at most W of them end in eos, so W can stay alive.
    top_log_probs, top_indices = lax.top_k(candidates, 2 * width)  # [B, 2beam]
    top_beams = top_indices // vocab_size  # [B, 2beam]
    top_tokens = top_indices % vocab_size  # [B, 2beam]
    top_seqs = _take(alive_seqs, top_beams)  # [B, 2beam, T]
    top_seqs = jnp.where(positions == step, top_tokens[:, :, None], top_seqs)
    top_is_eos = top_tokens == eos_id  # [B, 2beam]

    # Alive: the W best extensions that did not end; their state follows them.
    alive_log_probs, keep = lax.top_k(jnp.where(top_is_eos, NEG_INF, top_log_probs),
                                      width)  # [B, beam]
    alive_seqs = _take(top_seqs, keep)  # [B, beam, T]
    state = follow(state, _take(top_beams, keep))

    # Finished: the W best of the old finished and the extensions that just ended among
    # the W best (as fairseq does; so beam size 1 with alpha 0 is exactly greedy).
    ended = top_is_eos & (jnp.arange(2 * width) < width)  # [B, 2beam]
    new_scores = jnp.where(ended, top_log_probs / length_penalty(step + 1, alpha),
                           NEG_INF)  # [B, 2beam]
    all_seqs = jnp.concatenate([finished_seqs, top_seqs], axis=1)  # [B, 3beam, T]
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)  # [B, 3beam]
    all_flags = jnp.concatenate([finished_flags, ended], axis=1)  # [B, 3beam]
    finished_scores, keep = lax.top_k(all_scores, width)  # [B, beam]
    finished_seqs = _take(all_seqs, keep)  # [B, beam, T]
    finished_flags = _take(all_flags, keep)  # [B, beam]
    return (step + 1, alive_seqs, alive_log_probs, finished_seqs, finished_scores,
            finished_flags, state)

  seqs = jnp.full((batch_size, width, max_decode_len), pad_id, jnp.int32)  # [B, beam, T]
  # Only beam 0 is live at first, so the W beams do not start as W copies of one.
  alive_log_probs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (width - 1), jnp.float32),
                             (batch_size, 1))  # [B, beam]
  carry = (jnp.zeros((), jnp.int32), seqs, alive_log_probs, seqs,
           jnp.full((batch_size, width), NEG_INF, jnp.float32),
           jnp.zeros((batch_size, width), jnp.bool_), state)
  ends = (*stages, max_decode_len)
  if list(ends) != sorted(set(ends)) or ends[0] < 1 or (stages and grow is None):
    raise ValueError(f'stages {stages} must rise from 1 to below max_decode_len '
                     f'{max_decode_len}, and need `grow`')
  for stage, end in enumerate(ends):
    if stage:
      carry = (*carry[:-1], grow(carry[-1], end))
    carry = lax.while_loop(lambda carry, end=end: cond(carry) & (carry[0] < end), body, carry)
  (step, alive_seqs, alive_log_probs, finished_seqs, finished_scores, finished_flags,
   _) = carry

  # Unfinished hypotheses only fill the slots that no finished one took.
  alive_scores = alive_log_probs / length_penalty(step, alpha)  # [B, beam]
  finished_scores = jnp.where(finished_flags, finished_scores, 2 * NEG_INF)
  scores, keep = lax.top_k(jnp.concatenate([finished_scores, alive_scores], axis=1),
                           width)  # [B, beam]
  tokens = _take(jnp.concatenate([finished_seqs, alive_seqs], axis=1), keep)
  return tokens, scores


# ---------------------------------------------------------------------------------------
# The most likely continuation, by either search.
# ---------------------------------------------------------------------------------------

def search(score_fn: ScoreFn, state: State, first_tokens: Int[Array, "B"], *,
           beam_size: int, max_decode_len: int, alpha: float | Float[Array, ""] = 0.6,
           eos_id: int, pad_id: int,
           to_beams: Callable[[State, int], State] = expand_to_beams,
           follow: Callable[[State, Int[Array, "B beam"]], State] | None = None,
           stages: tuple[int, ...] = (),
           grow: Callable[[State, int], State] | None = None) -> Int[Array, "B T"]:
  """The most likely continuation of each row: greedy decoding when `beam_size` is 1
  (`score_fn` gives logits), else beam search's best beam (`score_fn` gives
  log-probabilities over the state `to_beams(state, beam_size)`; `alpha`, `follow`,
  `stages` and `grow` as in `beam_search`).

  Returns T = max_decode_len tokens [B, T] (without `first_tokens`; `pad_id` after eos).
  """
  if beam_size == 1:
    return sample_loop(score_fn, state, first_tokens, num_steps=max_decode_len,
                       temperature=0.0, eos_id=eos_id, pad_id=pad_id)
  beams, _ = beam_search(score_fn, to_beams(state, beam_size), first_tokens,
                         beam_size=beam_size, max_decode_len=max_decode_len, alpha=alpha,
                         eos_id=eos_id, pad_id=pad_id, follow=follow, stages=stages,
                         grow=grow)
  return beams[:, 0]
