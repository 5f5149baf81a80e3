"""Decoding with our models: cached versus full forward passes, generation, translation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer as tf
from transformer import inference
from transformer.data.tokenizers import BOS_ID, EOS_ID

RNG = jax.random.PRNGKey(0)
VOCAB = 40
EOS = EOS_ID
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
  return inference.left_pad(rows), rows


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
  step = jax.jit(lambda tokens, cache: model.apply(params, tokens, cache,
                                                   method=model.decode_step))
  cached = incremental_logits(step, tokens, model.init_cache(3, 9), prefill_length=4)
  assert relative_error(cached, full) < 1e-5


@pytest.mark.parametrize('padded', [False, True])
def test_encoder_decoder_cached_decoding_matches_full_forward(padded):
  model = tf.Transformer(CACHE_CONFIG)
  params = model.init(RNG, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
  src = random_tokens(2, (3, 7))
  tgt = random_tokens(3, (3, 8))
  tgt[:, 0] = BOS_ID
  if padded:  # right-padded sources and targets
    src[1, 4:] = 0
    src[2, 2:] = 0
    tgt[0, 5:] = 0
  full = jax.jit(model.apply)(params, src, tgt)
  memory = jax.jit(lambda src: model.apply(params, src, method=model.decoder_memory))(src)
  step = jax.jit(lambda tokens, cache: model.apply(params, tokens, cache, memory,
                                                   method=model.decode_step))
  cached = incremental_logits(step, tgt, model.init_cache(3, 8), prefill_length=3)
  assert relative_error(cached, full) < 1e-5


# ---------------------------------------------------------------------------------------
# The generation loop with a DecoderLM.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def greedy_tokens(lm, prompts):
  model, params = lm
  return np.asarray(inference.generate(model, params, prompts[0], max_new_tokens=10,
                                    temperature=0.0))


def test_greedy_generate_matches_the_uncached_reference(lm, prompts, greedy_tokens):
  model, params = lm
  reference = inference.greedy_uncached(model, params, prompts[0], max_new_tokens=10)
  np.testing.assert_array_equal(greedy_tokens, reference)
  assert len(set(greedy_tokens.ravel())) > 3  # not a degenerate model
  # A left-padded row decodes as it does alone.
  alone = inference.generate(model, params, np.array([prompts[1][1]], np.int32),
                          max_new_tokens=10, temperature=0.0)
  np.testing.assert_array_equal(alone[0], greedy_tokens[1])


def test_generation_stops_at_eos(lm, prompts, greedy_tokens):
  model, params = lm
  # Declare as eos a token that some row r produces first at a step j > 0.
  r, j = next((r, j) for r, row in enumerate(greedy_tokens.tolist())
              for j in range(1, len(row)) if row[j] not in row[:j])
  eos = int(greedy_tokens[r, j])
  out = np.asarray(inference.generate(model, params, prompts[0], max_new_tokens=10,
                                   temperature=0.0, eos_id=eos))
  for got, full in zip(out, greedy_tokens):
    stop = list(full).index(eos) + 1 if eos in full else len(full)
    np.testing.assert_array_equal(got[:stop], full[:stop])
    assert (got[stop:] == 0).all()
  assert out[r, j] == eos and (out[r, j + 1:] == 0).all()


def test_sampling_with_a_fixed_seed_is_reproducible(lm, prompts):
  model, params = lm
  sample = lambda seed: np.asarray(inference.generate(
      model, params, prompts[0], max_new_tokens=10, rng=jax.random.PRNGKey(seed),
      temperature=1.5))
  np.testing.assert_array_equal(sample(7), sample(7))
  assert (sample(7) != sample(8)).any()


def test_top_k_1_and_tiny_top_p_and_tiny_temperature_equal_greedy(lm, prompts, greedy_tokens):
  model, params = lm
  run = lambda **kwargs: np.asarray(inference.generate(
      model, params, prompts[0], max_new_tokens=10, rng=jax.random.PRNGKey(5), **kwargs))
  np.testing.assert_array_equal(run(temperature=2.0, top_k=1), greedy_tokens)
  np.testing.assert_array_equal(run(temperature=2.0, top_p=1e-6), greedy_tokens)
  np.testing.assert_array_equal(run(temperature=1e-4), greedy_tokens)
  assert (run(temperature=2.0) != greedy_tokens).any()  # the same loop does sample


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
  return np.asarray(inference.translate_greedy(model, params, sources, max_decode_len=9))


def test_translate_beam_size_1_equals_greedy(encdec, sources, translated_greedy):
  model, params = encdec
  tokens, _ = inference.translate_beam(model, params, sources, beam_size=1, alpha=0.0,
                                    max_decode_len=9)
  np.testing.assert_array_equal(tokens[:, 0], translated_greedy)
  assert len(set(translated_greedy.ravel())) > 2


def test_translate_is_greedy_at_beam_1_and_beam_searchs_best_above(encdec, sources,
                                                                  translated_greedy):
  model, params = encdec
  np.testing.assert_array_equal(
      inference.translate(model, params, sources, beam_size=1, max_decode_len=9),
      translated_greedy)
  beams, _ = inference.translate_beam(model, params, sources, beam_size=3, alpha=0.6,
                                      max_decode_len=9)
  np.testing.assert_array_equal(
      inference.translate(model, params, sources, beam_size=3, alpha=0.6, max_decode_len=9),
      beams[:, 0])


def test_default_max_decode_len_is_input_length_plus_50(encdec, sources):
  model, _ = encdec
  assert inference._default_decode_len(model, sources, None) == sources.shape[1] + 50
  with pytest.raises(ValueError, match='max_len'):
    inference._default_decode_len(model, sources, model.config.max_len + 1)


def sequence_log_probs(model, params, src, hypotheses, eos):
  """Teacher-forced log P(Y) and |Y| (tokens up to and including eos) of each hypothesis."""
  bos = np.full((len(hypotheses), 1), BOS_ID, np.int32)
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
  tokens, scores = inference.translate_beam(model, params, sources, beam_size=beam, alpha=alpha,
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


@pytest.mark.parametrize('stages', [(), (4,)])
def test_beams_reading_a_fixed_cache_through_slots_match_beams_gathering_it(
    encdec, sources, translated_greedy, stages):
  """translate_beam's cache stays in place (`beam_cache`, `follow_beams`), and starts
  short (`stages`, `grow_cache`), and the beams of a source share its memory; the plain
  way gathers a full-length cache by beam after every step and repeats the memory for
  every beam. Same hypotheses, same scores."""
  from transformer import decode, models
  model, params = encdec
  eos, beam, length = int(translated_greedy[0, 2]), 3, 9
  memory = inference._encode(model, params, sources)
  first = jnp.full((sources.shape[0],), BOS_ID, jnp.int32)
  # Our arrays' batch axes: keys and values count theirs from the end.
  batch_axis = lambda path: -4 if path[0].key in ('key', 'value') else 0
  repeat = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: x if x.ndim == 0 else jnp.repeat(x, beam, batch_axis(path)), tree)

  def gather(cache, parents):   # the plain way: every array follows its beam
    rows = (jnp.arange(parents.shape[0])[:, None] * beam + parents).reshape(-1)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x if x.ndim == 0 else jnp.take(x, rows, batch_axis(path)), cache)

  @functools.partial(jax.jit, static_argnums=(2, 3))
  def search(memory, cache, follow, stages):
    score = inference._for_beam_search(
        inference._translation_score_fn(model, params, memory), 0)
    return decode.beam_search(score, cache, first, beam_size=beam, max_decode_len=length,
                              eos_id=eos, pad_id=0, follow=follow, stages=stages,
                              grow=models.grow_cache)
  cache = model.init_cache(sources.shape[0], stages[0] if stages else length)
  tokens, scores = search(memory, inference.beam_cache(cache, beam), inference.follow_beams,
                          stages)
  full_cache = repeat(model.init_cache(sources.shape[0], length))
  gathered_tokens, gathered_scores = search(repeat(memory), full_cache, gather, ())
  np.testing.assert_array_equal(tokens, gathered_tokens)
  np.testing.assert_allclose(scores, gathered_scores, rtol=1e-5)
  assert len({tuple(h) for h in np.asarray(tokens)[0]}) == beam
  ended = np.asarray(tokens) == eos
  assert ended.any()   # some hypotheses end, and some run on into the second stage:
  assert (np.where(ended.any(-1), ended.argmax(-1), length) > 4).any()


@pytest.fixture(scope='module')
def scanned_encdec(encdec):
  from flax import linen as nn
  from transformer import models
  model, params = encdec
  scanned = tf.Transformer(model.config.replace(scan_layers=True))
  return scanned, {'params': models.scan_params(nn.meta.unbox(params)['params'])}


def test_scanned_models_decode_the_tokens_of_their_unscanned_layout(
    encdec, scanned_encdec, sources, translated_greedy):
  """A scanned model decodes by scanning over its stacked cache, never unscanning: the
  same greedy and beam tokens as the unscanned layout of the same parameters."""
  model, params = encdec
  scanned, stacked = scanned_encdec
  tokens = inference.translate_greedy(scanned, stacked, sources, max_decode_len=9)
  np.testing.assert_array_equal(tokens, translated_greedy)
  beams, scores = inference.translate_beam(scanned, stacked, sources, beam_size=3,
                                           max_decode_len=9)
  expected_beams, expected_scores = inference.translate_beam(model, params, sources,
                                                             beam_size=3, max_decode_len=9)
  np.testing.assert_array_equal(beams, expected_beams)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
  # The decoder's layers run as a loop inside the decoding loop (the encoder's too).
  loops = lambda m, p: inference.translate_greedy.lower(
      m, p, sources, max_decode_len=9).as_text().count('stablehlo.while')
  assert loops(scanned, stacked) > loops(model, params)


def test_scanned_language_models_sample_the_tokens_of_their_unscanned_layout():
  from flax import linen as nn
  from transformer import models
  model = tf.DecoderLM(CACHE_CONFIG)
  params = nn.meta.unbox(model.init(RNG, jnp.ones((1, 4), jnp.int32)))
  scanned = tf.DecoderLM(CACHE_CONFIG.replace(scan_layers=True))
  stacked = {'params': models.scan_params(params['params'])}
  prompts = jnp.asarray(inference.left_pad([[5, 6, 7], [8]]))
  for settings in (dict(temperature=0.0), dict(temperature=1.0, top_k=5)):
    want = inference.generate(model, params, prompts, max_new_tokens=6,
                              rng=jax.random.PRNGKey(4), **settings)
    got = inference.generate(scanned, stacked, prompts, max_new_tokens=6,
                             rng=jax.random.PRNGKey(4), **settings)
    np.testing.assert_array_equal(got, want)


class _IdTokenizer:
  """Text '3 17 5' <-> ids [3, 17, 5], up to eos."""
  eos_id, bos_id = EOS, BOS_ID

  def encode(self, text):
    return [int(t) for t in text.split()]

  def decode(self, ids):
    ids = [int(i) for i in ids]
    return ' '.join(map(str, ids[:ids.index(EOS)] if EOS in ids else ids))


def test_translate_texts_pads_sources_with_the_models_pad_id(encdec):
  """Batched sources are padded (to a bucket of 8) with the model's pad id, here the last
  one, so 0 is a real token: each translation is the source's translation alone."""
  _, params = encdec
  model = tf.Transformer(CONFIG.replace(pad_id=VOCAB - 1))
  tokenizer = _IdTokenizer()
  texts = ['5 9 13', '0 0 7 22 3 30']
  outputs = inference.translate_texts(model, params, tokenizer, texts, beam_size=1,
                                      batch_size=2, max_extra_len=6)
  for text, output in zip(texts, outputs):
    source = jnp.asarray([tokenizer.encode(text) + [EOS]])
    alone = inference.translate_greedy(model, params, source, max_decode_len=8 + 6)
    assert output == tokenizer.decode(np.asarray(alone)[0])
