"""The search: samplers and beam search over hand-built scoring functions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import decode
from transformer.data.tokenizers import BOS_ID, EOS_ID, PAD_ID

RNG = jax.random.PRNGKey(0)
EOS = EOS_ID


# ---------------------------------------------------------------------------------------
# Samplers, as pure functions.
# ---------------------------------------------------------------------------------------

def sample_many(logits, num_samples, seed=0, **kwargs):
  """Samples `num_samples` tokens from one row of logits [V]."""
  batch = jnp.broadcast_to(logits, (num_samples, logits.shape[-1]))
  return np.asarray(decode.sample_logits(jax.random.PRNGKey(seed), batch, **kwargs))


def test_sampling_follows_the_tempered_softmax():
  logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0])
  for temperature in (1.0, 2.0):
    samples = sample_many(logits, 40_000, temperature=temperature)
    frequencies = np.bincount(samples, minlength=5) / samples.size
    expected = np.asarray(jax.nn.softmax(logits / temperature))
    np.testing.assert_allclose(frequencies, expected, atol=0.01)


def test_temperature_towards_zero_approaches_greedy():
  logits = jax.random.normal(RNG, (4000, 12)) * 2
  best = np.asarray(decode.greedy(logits))
  agreement = []
  for temperature in (2.0, 0.5, 0.1, 1e-3, 1e-5):
    samples = decode.sample_logits(jax.random.PRNGKey(1), logits, temperature=temperature)
    agreement.append((np.asarray(samples) == best).mean())
  assert agreement[0] < 0.6, agreement
  assert all(a < b for a, b in zip(agreement, agreement[1:])), agreement
  assert agreement[-2] > 0.99 and agreement[-1] == 1.0, agreement
  exact = decode.sample_logits(jax.random.PRNGKey(1), logits, temperature=0.0)
  np.testing.assert_array_equal(exact, best)


def test_top_k_never_samples_outside_the_top_k():
  logits = jax.random.normal(RNG, (30,)) * 3
  top = set(np.argsort(-np.asarray(logits))[:5])
  samples = sample_many(logits, 5000, top_k=5, temperature=3.0)
  assert set(samples) == top  # all of the top 5, and nothing else
  # Exactly k survive even when logits tie.
  masked = decode.top_k_mask(jnp.zeros((2, 10)), 3)
  np.testing.assert_array_equal(np.isfinite(masked).sum(-1), [3, 3])


def nucleus(probs, p):
  order = np.argsort(-probs)
  mass_before = np.cumsum(probs[order]) - probs[order]
  return set(order[mass_before < p])


def test_top_p_never_samples_outside_the_nucleus():
  logits = jax.random.normal(jax.random.PRNGKey(3), (30,)) * 1.5
  for temperature, top_p in ((1.0, 0.6), (0.7, 0.9), (2.0, 0.3)):
    scaled = np.asarray(logits, np.float64) / temperature
    probs = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
    expected = nucleus(probs, top_p)
    assert 1 < len(expected) < 30
    samples = sample_many(logits, 8000, temperature=temperature, top_p=top_p)
    assert set(samples) == expected, (temperature, top_p)
  # The most likely token survives any p; p = 1 keeps everything.
  assert np.isfinite(decode.top_p_mask(logits[None], 1e-9)).sum() == 1
  assert np.isfinite(decode.top_p_mask(logits[None], 1.0)).all()


# ---------------------------------------------------------------------------------------
# The beam search core with hand-built scoring functions.
# ---------------------------------------------------------------------------------------

SMALL_VOCAB = 10


def markov_scorer(transitions):
  """A scoring function where the next token depends only on the last one:
  transitions {previous: {next: probability}}; unlisted next tokens get ~0."""
  table = np.full((SMALL_VOCAB, SMALL_VOCAB), -1e9)
  for previous, row in transitions.items():
    for nxt, probability in row.items():
      table[previous, nxt] = math.log(probability)
  table = jnp.asarray(table, jnp.float32)
  return lambda tokens, state: (table[tokens], state)


def run_beam(transitions, beam_size, alpha=0.0, max_decode_len=6):
  tokens, scores = decode.beam_search(
      markov_scorer(transitions), {'steps': jnp.zeros((beam_size,), jnp.int32)},
      jnp.array([BOS_ID]), beam_size=beam_size, max_decode_len=max_decode_len,
      alpha=alpha, eos_id=EOS, pad_id=PAD_ID)
  return np.asarray(tokens[0]), np.asarray(scores[0])


def test_beam_search_stages_must_rise_below_the_length_and_come_with_grow():
  scorer = markov_scorer({BOS_ID: {EOS: 1.0}})
  for stages, grow in [((7,), lambda s, n: s), ((3, 2), lambda s, n: s), ((3,), None)]:
    with pytest.raises(ValueError, match='stages'):
      decode.beam_search(scorer, {}, jnp.array([BOS_ID]), beam_size=2, max_decode_len=6,
                         eos_id=EOS, pad_id=PAD_ID, stages=stages, grow=grow)


BOS = BOS_ID


def test_beam_search_finds_a_sequence_greedy_misses():
  # Greedy takes 3 (0.6) and then has only 0.34 to spend: 0.204 < 0.4 * 0.9 = 0.36.
  transitions = {BOS: {3: 0.6, 4: 0.4}, 3: {5: 0.34, 6: 0.33, 7: 0.33}, 4: {8: 0.9, 9: 0.1},
                 5: {EOS: 1.0}, 6: {EOS: 1.0}, 7: {EOS: 1.0}, 8: {EOS: 1.0}, 9: {EOS: 1.0}}
  greedy_tokens, greedy_scores = run_beam(transitions, beam_size=1)
  np.testing.assert_array_equal(greedy_tokens[0], [3, 5, EOS, 0, 0, 0])
  beam_tokens, beam_scores = run_beam(transitions, beam_size=2)
  np.testing.assert_array_equal(beam_tokens[0], [4, 8, EOS, 0, 0, 0])
  np.testing.assert_allclose(beam_scores[0], math.log(0.36), rtol=1e-5)
  np.testing.assert_allclose(greedy_scores[0], math.log(0.204), rtol=1e-5)


def test_search_is_greedy_at_beam_1_and_the_best_beam_above():
  transitions = {BOS: {3: 0.6, 4: 0.4}, 3: {5: 0.34, 6: 0.33, 7: 0.33}, 4: {8: 0.9, 9: 0.1},
                 5: {EOS: 1.0}, 6: {EOS: 1.0}, 7: {EOS: 1.0}, 8: {EOS: 1.0}, 9: {EOS: 1.0}}
  scorer = markov_scorer(transitions)
  expanded = []

  def to_beams(state, beam_size):
    expanded.append(beam_size)
    return decode.expand_to_beams(state, beam_size)

  run = lambda beam_size: np.asarray(decode.search(
      scorer, {'steps': jnp.zeros((1,), jnp.int32)}, jnp.array([BOS]), beam_size=beam_size,
      max_decode_len=6, alpha=0.0, eos_id=EOS, pad_id=PAD_ID, to_beams=to_beams))
  np.testing.assert_array_equal(run(1), [[3, 5, EOS, 0, 0, 0]])    # greedy: no beams
  assert expanded == []
  np.testing.assert_array_equal(run(2), [[4, 8, EOS, 0, 0, 0]])    # the best of 2 beams
  assert expanded == [2]


def test_finished_beams_are_not_extended():
  # After eos the scorer offers a log-probability bonus of +5: extending a finished beam
  # would win it. The scores must stay log P / lp(|Y|) with pad after eos.
  transitions = {BOS: {EOS: 0.6, 3: 0.4}, 3: {EOS: 0.9, 4: 0.1}, 4: {EOS: 1.0},
                 EOS: {5: math.exp(5.0)}}
  alpha = 0.6
  tokens, scores = run_beam(transitions, beam_size=3, alpha=alpha)
  lp = lambda n: ((5 + n) / 6) ** alpha
  np.testing.assert_array_equal(tokens, [[EOS, 0, 0, 0, 0, 0], [3, EOS, 0, 0, 0, 0],
                                         [3, 4, EOS, 0, 0, 0]])
  np.testing.assert_allclose(scores, [math.log(0.6) / lp(1), math.log(0.36) / lp(2),
                                      math.log(0.04) / lp(3)], rtol=1e-5)


def test_length_penalty_changes_the_choice_where_the_formula_says():
  # Short [3, eos]: log P = -1.0, 2 tokens. Long [4, 5, 6, eos]: log P = -1.2, 4 tokens.
  # -1.0 / lp(2) = -1.2 / lp(4)  <=>  alpha = ln 1.2 / ln(9 / 7) ~ 0.725.
  transitions = {BOS: {3: math.exp(-1.0), 4: math.exp(-1.2), 7: 1 - math.exp(-1) - math.exp(-1.2)},
                 3: {EOS: 1.0}, 4: {5: 1.0}, 5: {6: 1.0}, 6: {EOS: 1.0}, 7: {EOS: 1.0}}
  threshold = math.log(1.2) / math.log(9 / 7)
  short, long = [3, EOS, 0, 0, 0, 0], [4, 5, 6, EOS, 0, 0]
  for alpha, expected in ((0.0, short), (0.6, short), (threshold - 0.05, short),
                          (threshold + 0.05, long), (1.0, long)):
    tokens, scores = run_beam(transitions, beam_size=3, alpha=alpha)
    np.testing.assert_array_equal(tokens[0], expected, err_msg=f'alpha={alpha}')
    length, log_prob = (2, -1.0) if expected == short else (4, -1.2)
    np.testing.assert_allclose(scores[0], log_prob / ((5 + length) / 6) ** alpha, rtol=1e-5)


def test_beam_state_follows_its_beam():
  """The scorer keeps each beam's first token in its state and scores from it. After step
  1 the beams swap order ([4, 5] overtakes [3, 5]); were the state not gathered with them,
  each beam would be scored with the other's first token and the scores would change."""
  table = np.full((5, SMALL_VOCAB, SMALL_VOCAB), -1e9)  # [first token, last token, next]
  table[0, BOS, 3], table[0, BOS, 4] = math.log(0.6), math.log(0.4)
  table[3, 3, 5], table[3, 3, 6] = math.log(0.1), math.log(0.05)
  table[4, 4, 5] = math.log(0.9)
  table[3, 5, EOS], table[3, 6, EOS] = math.log(0.5), math.log(0.5)
  table[4, 5, EOS] = 0.0
  table = jnp.asarray(table, jnp.float32)

  def scorer(tokens, state):
    first = jnp.where((state['first'] == 0) & (tokens != BOS), tokens, state['first'])
    return table[first, tokens], {'first': first}

  tokens, scores = decode.beam_search(scorer, {'first': jnp.zeros((2,), jnp.int32)},
                                      jnp.array([BOS]), beam_size=2, max_decode_len=6,
                                      alpha=0.0, eos_id=EOS, pad_id=PAD_ID)
  np.testing.assert_array_equal(tokens[0], [[4, 5, EOS, 0, 0, 0], [3, 5, EOS, 0, 0, 0]])
  np.testing.assert_allclose(scores[0], [math.log(0.36), math.log(0.03)], rtol=1e-5)
