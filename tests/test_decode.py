"""Decoding: cached versus full forward passes, samplers, the generation loop, beam search."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer as tf
from transformer import decode

RNG = jax.random.PRNGKey(0)
VOCAB = 40
EOS = decode.EOS_ID
# An untied output projection: random tied embeddings mostly repeat the input token. One
# small layer compiles fast; the cache tests use the two-layer `tiny` itself.
CONFIG = tf.tiny(vocab_size=VOCAB, tie_output=False, num_layers=1, d_model=32, mlp_dim=64)
CACHE_CONFIG = tf.tiny(vocab_size=VOCAB, tie_output=False)


def relative_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.fixture(scope='module')
def lm():
  model = tf.DecoderLM(CONFIG)
  return model, model.init(RNG, jnp.ones((1, 4), jnp.int32))


@pytest.fixture(scope='module')
def encdec():
  model = tf.Transformer(CONFIG)
  ones = jnp.ones((1, 4), jnp.int32)
  return model, model.init(RNG, ones, ones)


@pytest.fixture(scope='module')
def prompts():
  """Left-padded prompts of lengths 6, 2 and 4."""
  rows = [[1, 5, 9, 13, 17, 21], [1, 30], [1, 7, 22, 3]]
  return decode.left_pad(rows), rows


def random_tokens(seed, shape):
  return np.array(jax.random.randint(jax.random.PRNGKey(seed), shape, 3, VOCAB), np.int32)


# ---------------------------------------------------------------------------------------
# The cache: incremental decoding gives the full forward pass's logits.
# ---------------------------------------------------------------------------------------

def incremental_logits(apply, tokens, cache, prefill_length):
  """Prefills `prefill_length` tokens in one call, then feeds the rest one at a time."""
  logits, cache = apply(tokens[:, :prefill_length], cache)
  pieces = [logits]
  for t in range(prefill_length, tokens.shape[1]):
    logits, cache = apply(tokens[:, t:t + 1], cache)
    pieces.append(logits)
  return jnp.concatenate(pieces, axis=1)


@pytest.mark.parametrize('padded', [False, True])
def test_lm_cached_decoding_matches_full_forward(padded):
  model = tf.DecoderLM(CACHE_CONFIG)
  params = model.init(RNG, jnp.ones((1, 4), jnp.int32))
  tokens = random_tokens(1, (3, 9))
  if padded:  # left padding of 0, 3 and 5 tokens
    tokens[1, :3] = 0
    tokens[2, :5] = 0
  full = jax.jit(model.apply)(params, tokens)
  step = jax.jit(lambda tokens, cache: model.apply(params, tokens, cache=cache))
  cached = incremental_logits(step, tokens, model.init_cache(3, 9), prefill_length=4)
  assert relative_error(cached, full) < 1e-5


@pytest.mark.parametrize('padded', [False, True])
def test_encoder_decoder_cached_decoding_matches_full_forward(padded):
  model = tf.Transformer(CACHE_CONFIG)
  params = model.init(RNG, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
  src = random_tokens(2, (3, 7))
  tgt = random_tokens(3, (3, 8))
  tgt[:, 0] = decode.BOS_ID
  if padded:  # right-padded sources and targets
    src[1, 4:] = 0
    src[2, 2:] = 0
    tgt[0, 5:] = 0
  full = jax.jit(model.apply)(params, src, tgt)
  encoded = jax.jit(lambda src: model.apply(params, src, method=model.encode))(src)
  step = jax.jit(lambda tokens, cache: model.apply(params, encoded, src, tokens, cache=cache,
                                                   method=model.decode))
  cached = incremental_logits(step, tgt, model.init_cache(3, 8), prefill_length=3)
  assert relative_error(cached, full) < 1e-5


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
# The generation loop with a DecoderLM.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def greedy_tokens(lm, prompts):
  model, params = lm
  return np.asarray(decode.generate(model, params, prompts[0], max_new_tokens=10,
                                    temperature=0.0))


def test_greedy_generate_matches_the_uncached_reference(lm, prompts, greedy_tokens):
  model, params = lm
  reference = decode.greedy_uncached(model, params, prompts[0], max_new_tokens=10)
  np.testing.assert_array_equal(greedy_tokens, reference)
  assert len(set(greedy_tokens.ravel())) > 3  # not a degenerate model
  # A left-padded row decodes as it does alone.
  alone = decode.generate(model, params, np.array([prompts[1][1]], np.int32),
                          max_new_tokens=10, temperature=0.0)
  np.testing.assert_array_equal(alone[0], greedy_tokens[1])


def test_generation_stops_at_eos(lm, prompts, greedy_tokens):
  model, params = lm
  # Declare as eos a token that some row r produces first at a step j > 0.
  r, j = next((r, j) for r, row in enumerate(greedy_tokens.tolist())
              for j in range(1, len(row)) if row[j] not in row[:j])
  eos = int(greedy_tokens[r, j])
  out = np.asarray(decode.generate(model, params, prompts[0], max_new_tokens=10,
                                   temperature=0.0, eos_id=eos))
  for got, full in zip(out, greedy_tokens):
    stop = list(full).index(eos) + 1 if eos in full else len(full)
    np.testing.assert_array_equal(got[:stop], full[:stop])
    assert (got[stop:] == 0).all()
  assert out[r, j] == eos and (out[r, j + 1:] == 0).all()


def test_sampling_with_a_fixed_seed_is_reproducible(lm, prompts):
  model, params = lm
  sample = lambda seed: np.asarray(decode.generate(
      model, params, prompts[0], max_new_tokens=10, rng=jax.random.PRNGKey(seed),
      temperature=1.5))
  np.testing.assert_array_equal(sample(7), sample(7))
  assert (sample(7) != sample(8)).any()


def test_top_k_1_and_tiny_top_p_and_tiny_temperature_equal_greedy(lm, prompts, greedy_tokens):
  model, params = lm
  run = lambda **kwargs: np.asarray(decode.generate(
      model, params, prompts[0], max_new_tokens=10, rng=jax.random.PRNGKey(5), **kwargs))
  np.testing.assert_array_equal(run(temperature=2.0, top_k=1), greedy_tokens)
  np.testing.assert_array_equal(run(temperature=2.0, top_p=1e-6), greedy_tokens)
  np.testing.assert_array_equal(run(temperature=1e-4), greedy_tokens)
  assert (run(temperature=2.0) != greedy_tokens).any()  # the same loop does sample


def test_lm_beam_size_1_equals_greedy(lm, prompts, greedy_tokens):
  model, params = lm
  tokens, _ = decode.generate_beam(model, params, prompts[0], max_new_tokens=10,
                                   beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)


# ---------------------------------------------------------------------------------------
# Translation: greedy and beam search with the encoder-decoder.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def sources():
  src = random_tokens(4, (3, 6))
  src[1, 3:] = 0
  src[2, 5:] = 0
  return src


@pytest.fixture(scope='module')
def translated_greedy(encdec, sources):
  model, params = encdec
  return np.asarray(decode.translate_greedy(model, params, sources, max_decode_len=9))


def test_translate_beam_size_1_equals_greedy(encdec, sources, translated_greedy):
  model, params = encdec
  tokens, _ = decode.translate_beam(model, params, sources, beam_size=1, alpha=0.0,
                                    max_decode_len=9)
  np.testing.assert_array_equal(tokens[:, 0], translated_greedy)
  assert len(set(translated_greedy.ravel())) > 2


def test_default_max_decode_len_is_input_length_plus_50(encdec, sources):
  model, _ = encdec
  assert decode._default_decode_len(model, sources, None) == sources.shape[1] + 50
  with pytest.raises(ValueError, match='max_len'):
    decode._default_decode_len(model, sources, model.config.max_len + 1)


def sequence_log_probs(model, params, src, hypotheses, eos):
  """Teacher-forced log P(Y) and |Y| (tokens up to and including eos) of each hypothesis."""
  bos = np.full((len(hypotheses), 1), decode.BOS_ID, np.int32)
  decoder_inputs = np.concatenate([bos, hypotheses[:, :-1]], axis=1)
  log_probs = jax.nn.log_softmax(jax.jit(model.apply)(params, src, decoder_inputs))
  picked = np.take_along_axis(np.asarray(log_probs, np.float64), hypotheses[..., None], -1)[..., 0]
  totals, lengths = [], []
  for row, tokens in zip(picked, hypotheses):
    length = list(tokens).index(eos) + 1 if eos in tokens else len(tokens)
    totals.append(row[:length].sum())
    lengths.append(length)
  return np.array(totals), np.array(lengths)


def test_translate_beam_scores_are_length_penalised_log_probs(encdec, sources,
                                                              translated_greedy):
  """Checks every hypothesis against a teacher-forced full pass: this fails if the cache
  did not follow its beam. A token the model likes is declared eos so beams finish."""
  model, params = encdec
  eos = int(translated_greedy[0, 2])
  beam, alpha = 4, 0.6
  tokens, scores = decode.translate_beam(model, params, sources, beam_size=beam, alpha=alpha,
                                         max_decode_len=9, eos_id=eos)
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  flat = tokens.reshape(-1, tokens.shape[-1])  # [B * beam, T]
  assert (flat == eos).any(axis=1).any()  # some hypotheses finished early
  for row in flat:  # nothing after eos
    if eos in row:
      assert (row[list(row).index(eos) + 1:] == 0).all()
  assert (np.diff(scores, axis=1) <= 0).all()  # best first
  for hypotheses in tokens:  # distinct hypotheses
    assert len({tuple(h) for h in hypotheses}) == beam
  log_probs, lengths = sequence_log_probs(model, params, np.repeat(sources, beam, 0), flat, eos)
  np.testing.assert_allclose(scores.ravel(), log_probs / ((5 + lengths) / 6) ** alpha,
                             rtol=1e-4)


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
      jnp.array([decode.BOS_ID]), beam_size=beam_size, max_decode_len=max_decode_len,
      alpha=alpha)
  return np.asarray(tokens[0]), np.asarray(scores[0])


BOS = decode.BOS_ID


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
                                      alpha=0.0)
  np.testing.assert_array_equal(tokens[0], [[4, 5, EOS, 0, 0, 0], [3, 5, EOS, 0, 0, 0]])
  np.testing.assert_allclose(scores[0], [math.log(0.36), math.log(0.03)], rtol=1e-5)
