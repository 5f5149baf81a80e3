"""The three model families: causality, padding invariance, sizes, dtypes, options, caches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import transformer as tf
from tests import reference
from transformer import config as config_lib
from transformer import models

RNG = jax.random.PRNGKey(0)


def count_params(model, *args):
  shapes = jax.eval_shape(model.init, RNG, *args)
  return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)))


def paper_parameter_count(cfg) -> int:
  """The encoder-decoder's parameters counted from the architecture (paper, section 3):
  one shared embedding (also the output projection), and per layer four projections
  D x D with biases per attention, two LayerNorms (scale and bias) per residual block, and
  the feed-forward network's D x F and F x D with biases."""
  d, f, v, layers = cfg.d_model, cfg.mlp_dim, cfg.vocab_size, cfg.num_layers
  attention = 4 * (d * d + d)
  feed_forward = d * f + f + f * d + d
  norm = 2 * d
  encoder_layer = attention + feed_forward + 2 * norm
  decoder_layer = 2 * attention + feed_forward + 3 * norm
  return v * d + layers * (encoder_layer + decoder_layer)


@pytest.mark.parametrize('preset,table_3_millions', [('paper_base', 65), ('paper_big', 213)])
def test_paper_parameter_counts(preset, table_3_millions):
  cfg = getattr(config_lib, preset)()
  tokens = jnp.zeros((1, 8), jnp.int32)
  count = count_params(tf.Transformer(cfg), tokens, tokens)
  assert count == paper_parameter_count(cfg)
  # Table 3 reports 65M and 213M; with the 37000-token shared vocabulary we count
  # 63.08M (-3.0%) and 214.2M (+0.6%): the paper does not say how it counts.
  assert count == {'paper_base': 63_082_496, 'paper_big': 214_245_376}[preset]
  assert abs(count / 1e6 - table_3_millions) / table_3_millions < 0.035


def test_presets_have_the_papers_hyperparameters():
  base, big = config_lib.paper_base(), config_lib.paper_big()
  assert (base.num_layers, base.d_model, base.mlp_dim, base.num_heads,
          base.resolved_head_dim, base.dropout_rate) == (6, 512, 2048, 8, 64, 0.1)
  assert (big.d_model, big.mlp_dim, big.num_heads, big.resolved_head_dim,
          big.dropout_rate) == (1024, 4096, 16, 64, 0.3)


def tokens(seed, shape, vocab=40, low=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, low, vocab)


def position_gradients(logits_fn, params, table_path, token_row):
  """[T, T]: |d (the logits at position t) / d (the embedding row of the token at position
  s)|, from one jitted Jacobian (the tokens are distinct, so rows map to positions)."""
  jacobian = jax.jit(jax.jacrev(lambda p: logits_fn(p)[0].sum(-1)))(params)   # leaves [T, ...]
  table = functools.reduce(lambda d, k: d[k], table_path, jacobian)
  table = table.unbox() if hasattr(table, 'unbox') else table
  return np.abs(np.asarray(table))[:, np.asarray(token_row)].sum(-1)


def assert_causal(gradients):
  t = np.arange(gradients.shape[0])
  future = t[None, :] > t[:, None]
  assert (gradients[future] == 0).all(), gradients
  assert (gradients[~future] > 0).all(), gradients


@pytest.mark.parametrize('position', ['sinusoidal', 'rope'])
def test_decoder_lm_is_causal_by_gradients(position):
  cfg = tf.tiny(vocab_size=40, tie_output=False, position=position)
  model = tf.DecoderLM(cfg)
  seq = jnp.arange(1, 11)[None]  # distinct tokens, so rows map to positions
  params = model.init(RNG, seq)
  assert_causal(position_gradients(lambda p: model.apply(p, seq), params,
                                   ('params', 'embedding', 'embedding'), seq[0]))


def test_encoder_decoder_decoder_is_causal_by_gradients():
  cfg = tf.tiny(vocab_size=40, tie_output=False, share_embeddings=False)
  model = tf.Transformer(cfg)
  src = tokens(1, (1, 6))
  tgt = jnp.arange(1, 9)[None]
  params = model.init(RNG, src, tgt)
  assert_causal(position_gradients(lambda p: model.apply(p, src, tgt), params,
                                   ('params', 'target_embedding', 'embedding'), tgt[0]))


def test_source_padding_does_not_change_real_outputs():
  cfg = tf.tiny(vocab_size=40)
  model = tf.Transformer(cfg)
  src, tgt = tokens(2, (2, 6)), tokens(3, (2, 5))
  params = model.init(RNG, src, tgt)
  padded_src = jnp.pad(src, ((0, 0), (0, 4)))
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(params, padded_src, tgt), apply(params, src, tgt),
                             rtol=1e-5, atol=1e-5)
  # Different contents behind the padding would not matter either: it is masked as pad.
  encode = jax.jit(lambda p, s: model.apply(p, s, method=model.encode))
  np.testing.assert_allclose(encode(params, padded_src)[:, :6], encode(params, src),
                             rtol=1e-5, atol=1e-5)


def test_target_and_lm_padding_does_not_change_real_outputs():
  cfg = tf.tiny(vocab_size=40)
  lm = tf.DecoderLM(cfg)
  seq = tokens(4, (2, 6))
  params = lm.init(RNG, seq)
  padded = jnp.pad(seq, ((0, 0), (0, 3)))
  np.testing.assert_allclose(lm.apply(params, padded)[:, :6], lm.apply(params, seq),
                             rtol=1e-5, atol=1e-5)
  enc_model = tf.EncoderModel(cfg)
  params = enc_model.init(RNG, seq)
  np.testing.assert_allclose(
      enc_model.apply(params, padded, method=enc_model.mlm_logits)[:, :6],
      enc_model.apply(params, seq, method=enc_model.mlm_logits), rtol=1e-5, atol=1e-5)


def build(kind, cfg):
  src, tgt = tokens(5, (2, 7), cfg.vocab_size), tokens(6, (2, 5), cfg.vocab_size)
  if kind == 'encdec':
    return tf.Transformer(cfg), (src, tgt)
  if kind == 'lm':
    return tf.DecoderLM(cfg), (tgt,)
  return tf.EncoderModel(cfg.replace(num_classes=3)), (src,)


def flat_outputs(out):
  return jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(out)])


@pytest.mark.parametrize('kind', ['encdec', 'lm', 'encoder'])
def test_jit_equals_eager_and_bfloat16_is_close(kind):
  cfg = tf.tiny(vocab_size=40)
  model, args = build(kind, cfg)
  params = model.init(RNG, *args)
  eager = flat_outputs(model.apply(params, *args))
  jitted = flat_outputs(jax.jit(model.apply)(params, *args))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  bf16_model, _ = build(kind, cfg.replace(dtype='bfloat16'))
  bf16 = flat_outputs(jax.jit(bf16_model.apply)(params, *args))
  assert bf16.dtype == jnp.float32  # logits come back in float32
  assert np.isfinite(np.asarray(bf16)).all()
  rel = float(jnp.linalg.norm(bf16 - eager) / jnp.linalg.norm(eager))
  assert rel < 2e-2, rel


def test_bfloat16_params_and_compute():
  cfg = tf.tiny(vocab_size=40, dtype='bfloat16', param_dtype='bfloat16')
  model, args = build('encdec', cfg)
  params = model.init(RNG, *args)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(nn.meta.unbox(params)))
  assert np.isfinite(np.asarray(model.apply(params, *args))).all()


OPTIONS = [
    dict(), dict(pre_norm=True), dict(norm='rmsnorm', pre_norm=True), dict(activation='swiglu'),
    dict(activation='gelu'), dict(position='learned'), dict(position='rope'),
    dict(num_kv_heads=1), dict(num_kv_heads=2), dict(share_embeddings=False, tie_output=False,
                                                     target_vocab_size=30),
    dict(use_bias=False), dict(num_decoder_layers=1), dict(head_dim=32),
    dict(scale_embeddings=False), dict(norm_epsilon=0.5), dict(activation='gelu_exact'),
    dict(activation='silu'), dict(sinusoid_layout='split'),
    dict(position='rope', rope_max_wavelength=100.0), dict(use_bias=False, qkv_bias=True),
    dict(logits_bias=True), dict(tie_output=False, logits_bias=False),
    dict(embedding_norm=True),
]


def random_params(model, *args):
  """Initialised parameters with biases and norm parameters made random too."""
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(treedef, [
      x if x.ndim > 1 else jax.random.normal(k, x.shape) * 0.2 + (x.ndim == 1) * 0.5
      for k, x in zip(keys, leaves)])


def reference_error(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize('changes', OPTIONS,
                         ids=lambda c: ','.join(f'{k}={v}' for k, v in c.items()) or 'paper')
def test_encoder_decoder_matches_the_reference_and_stays_causal(changes):
  cfg = tf.tiny(vocab_size=40, max_len=16, **changes)
  model = tf.Transformer(cfg)
  src, tgt = tokens(7, (2, 6), 30), tokens(8, (2, 5), 30)
  params = random_params(model, src, tgt)
  # Which biases exist (the reference uses whichever it finds).
  attention = params['decoder']['layer_0']['self_attention']
  assert ('bias' in attention['query']) == cfg.resolved_qkv_bias
  assert ('bias' in attention['out']) == cfg.use_bias
  if not cfg.tie_output:
    assert ('bias' in params['decoder']['output_projection']) == (cfg.logits_bias is not False)
  logits = jax.jit(model.apply)({'params': params}, src, tgt)
  assert logits.shape == (2, 5, cfg.resolved_target_vocab_size)
  expected = reference.transformer_logits(params, cfg, src, tgt)
  assert reference_error(logits, expected) < 1e-5
  # Changing the last target token must not change earlier logits.
  changed = model.apply({'params': params}, src, tgt.at[:, -1].set(tgt[:, -1] % 29 + 1))
  np.testing.assert_allclose(changed[:, :-1], logits[:, :-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('changes', [
    dict(), dict(pre_norm=True, position='learned', activation='gelu', norm_epsilon=1e-5),
    dict(pre_norm=True, norm='rmsnorm', position='rope', activation='swiglu', num_kv_heads=2,
         tie_output=False, use_bias=False, scale_embeddings=False),
    dict(pre_norm=True, norm='rmsnorm', position='rope', activation='swiglu', num_kv_heads=2,
         tie_output=False, logits_bias=False, use_bias=False, qkv_bias=True,
         scale_embeddings=False, rope_max_wavelength=1e6),
], ids=['paper', 'gpt2-like', 'llama-like', 'qwen2-like'])
def test_decoder_lm_matches_the_reference(changes):
  cfg = tf.tiny(vocab_size=40, max_len=16, **changes)
  model = tf.DecoderLM(cfg)
  seq = tokens(9, (2, 7))
  params = random_params(model, seq)
  expected = reference.lm_logits(params, cfg, seq)
  assert reference_error(jax.jit(model.apply)({'params': params}, seq), expected) < 1e-5


@pytest.mark.parametrize('changes', [
    dict(), dict(pre_norm=True, position='learned', activation='gelu', scale_embeddings=False),
    dict(position='learned', activation='gelu_exact', scale_embeddings=False,
         num_token_types=2, embedding_norm=True, norm_epsilon=1e-12),
], ids=['paper', 'pre-ln', 'bert'])
def test_encoder_model_matches_the_reference(changes):
  cfg = tf.tiny(vocab_size=40, max_len=16, num_classes=3, **changes)
  model = tf.EncoderModel(cfg)
  seq = tokens(10, (2, 7))
  params = random_params(model, seq)
  token_types = None
  if cfg.num_token_types:   # segment A, then segment B
    token_types = jnp.broadcast_to((jnp.arange(7) >= 3).astype(jnp.int32), (2, 7))
  out = jax.jit(model.apply)({'params': params}, seq, token_type_ids=token_types)
  expected = reference.encoder_model_outputs(params, cfg, seq, token_types)
  for key in ('mlm_logits', 'class_logits'):
    assert reference_error(out[key], expected[key]) < 1e-5, key


def test_decoder_can_read_pad_tokens_as_real_ones():
  """Marian starts decoding from the pad token: with mask_decoder_pad=False a decoder row
  holding pad ids equals the reference (which masks nothing), with the default it does
  not; source pads stay masked either way."""
  cfg = tf.tiny(vocab_size=40, max_len=16, mask_decoder_pad=False)
  model = tf.Transformer(cfg)
  src, tgt = tokens(15, (2, 6), 30), tokens(16, (2, 5), 30).at[:, 0].set(cfg.pad_id)
  params = random_params(model, src, tgt)
  logits = jax.jit(model.apply)({'params': params}, src, tgt)
  expected = reference.transformer_logits(params, cfg, src, tgt)
  assert reference_error(logits, expected) < 1e-5
  masked = tf.Transformer(cfg.replace(mask_decoder_pad=True)).apply({'params': params}, src, tgt)
  assert reference_error(masked, expected) > 1e-3
  padded_src = jnp.pad(src, ((0, 0), (0, 3)))
  np.testing.assert_allclose(model.apply({'params': params}, padded_src, tgt), logits,
                             rtol=1e-5, atol=1e-5)


def test_tied_output_is_the_embedding_transposed():
  """logits = x E^T: the last hidden state times the (shared) embedding table."""
  cfg = tf.tiny(vocab_size=40)
  model = tf.DecoderLM(cfg)
  seq = tokens(11, (2, 5))
  variables = model.init(RNG, seq)
  logits, state = model.apply(variables, seq, capture_intermediates=True, mutable=['intermediates'])
  hidden = state['intermediates']['decoder']['layer_1']['__call__'][0]   # [B, T, D]
  table = nn.meta.unbox(variables)['params']['embedding']['embedding']
  np.testing.assert_allclose(logits, hidden @ table.T, rtol=1e-5, atol=1e-5)


SMALL = dict(vocab_size=40, d_model=32, num_heads=4, mlp_dim=64, num_layers=3, max_len=16)


def family(kind, cfg):
  """(model, inputs, loss of the parameters) for one family, dropout on when asked."""
  src, tgt = tokens(21, (2, 7), cfg.vocab_size), tokens(22, (2, 6), cfg.vocab_size)
  if kind == 'encdec':
    model, args = tf.Transformer(cfg), (src, tgt)
  elif kind == 'lm':
    model, args = tf.DecoderLM(cfg), (tgt,)
  else:
    model, args = tf.EncoderModel(cfg.replace(num_classes=3)), (src,)

  def loss(params, rng=None):
    out = model.apply({'params': params}, *args, deterministic=rng is None,
                      rngs=None if rng is None else {'dropout': rng})
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out))
  return model, args, loss


def assert_trees_close(a, b, rtol=1e-5):
  """Each leaf within `rtol` of the other, relative to the leaf's largest value (float32
  sums in another order differ by rounding in their smallest elements), or to the whole
  tree's for leaves that are zero up to rounding (e.g. the gradient of a key bias, which
  the softmax cancels)."""
  scale = max(float(np.abs(np.asarray(y)).max()) for y in jax.tree.leaves(b))
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    error = np.abs(x - y).max() / max(np.abs(y).max(), 1e-2 * scale)
    assert error < rtol, (jax.tree_util.keystr(path), error)


@pytest.mark.parametrize('kind', ['encdec', 'lm', 'encoder'])
def test_scanned_layers_equal_unrolled_layers(kind):
  """Same parameters in the two layouts: the same loss and gradients (dropout off)."""
  cfg = tf.tiny(**SMALL)
  model, args, loss = family(kind, cfg)
  scanned_model, _, scanned_loss = family(kind, cfg.replace(scan_layers=True))
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  stacked = models.scan_params(params)
  scanned_init = nn.meta.unbox(scanned_model.init(RNG, *args))['params']
  assert jax.tree.structure(stacked) == jax.tree.structure(scanned_init)
  assert models.is_scanned(stacked) and not models.is_scanned(params)
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  scanned_value, scanned_grads = jax.jit(jax.value_and_grad(scanned_loss))(stacked)
  np.testing.assert_allclose(scanned_value, value, rtol=1e-5)
  assert_trees_close(models.unscan_params(scanned_grads), grads)
  # The conversions are exact inverses.
  jax.tree.map(np.testing.assert_array_equal, models.unscan_params(stacked), params)


def test_scanned_parameters_carry_the_layers_axis_name():
  cfg = tf.tiny(**SMALL, scan_layers=True)
  model, args, _ = family('lm', cfg)
  boxed = jax.eval_shape(model.init, RNG, *args)['params']
  kernel = boxed['decoder']['layers']['mlp']['wi']['kernel']
  assert kernel.names == ('layers', 'embed', 'mlp') and kernel.value.shape == (3, 32, 64)


def test_scanned_layers_drop_out_differently_per_layer():
  """Dropout keys are split per layer: a scanned model with dropout matches neither an
  all-layers-the-same-mask version nor itself with another key."""
  cfg = tf.tiny(**SMALL, dropout_rate=0.3, scan_layers=True)
  model, args, loss = family('lm', cfg)
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  a = loss(params, jax.random.PRNGKey(1))
  assert a != loss(params, jax.random.PRNGKey(2)) and a != loss(params)


REMAT_CFG = dict(SMALL, num_layers=2, dropout_rate=0.1)


@pytest.fixture(scope='module', params=[False, True], ids=['unrolled', 'scanned'])
def without_remat(request):
  """(config, parameters, value and gradients without remat, with dropout)."""
  cfg = tf.tiny(**REMAT_CFG, scan_layers=request.param)
  model, args, loss = family('lm', cfg)
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  return cfg, params, jax.jit(jax.value_and_grad(loss))(params, jax.random.PRNGKey(1))


@pytest.mark.parametrize('policy', [p for p in config_lib.REMAT_POLICIES if p != 'none'])
def test_remat_policies_give_the_same_values_and_gradients(policy, without_remat):
  cfg, params, (value, grads) = without_remat
  _, _, remat_loss = family('lm', cfg.replace(remat_policy=policy))
  remat_value, remat_grads = jax.jit(jax.value_and_grad(remat_loss))(params,
                                                                      jax.random.PRNGKey(1))
  np.testing.assert_allclose(remat_value, value, rtol=1e-5)
  assert_trees_close(remat_grads, grads)


def test_remat_recomputes_in_the_backward_pass():
  """'full' remat shows up in the backward program as recomputed forward work."""
  cfg = tf.tiny(**SMALL)
  model, args, loss = family('lm', cfg)
  _, _, remat_loss = family('lm', cfg.replace(remat_policy='full'))
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  count = lambda fn: str(jax.make_jaxpr(jax.grad(fn))(params)).count('remat')
  assert count(loss) == 0 and count(remat_loss) >= cfg.num_layers


def test_dropout_changes_training_outputs_only():
  cfg = tf.tiny(vocab_size=40, dropout_rate=0.3, attention_dropout_rate=0.1)
  model, args = build('lm', cfg)
  params = model.init(RNG, *args)
  a = model.apply(params, *args, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
  b = model.apply(params, *args, deterministic=False, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
  np.testing.assert_allclose(model.apply(params, *args), model.apply(params, *args))


def test_embeddings_are_shared_and_tied():
  cfg = tf.tiny(vocab_size=40)
  model, args = build('encdec', cfg)
  params = nn.meta.unbox(model.init(RNG, *args))['params']
  assert set(params) == {'source_embedding', 'encoder', 'decoder'}
  assert 'output_projection' not in params['decoder']


def test_classifier_head():
  cfg = tf.tiny(vocab_size=40, num_classes=3)
  model, (src,) = build('encoder', cfg)
  params = model.init(RNG, src)
  out = model.apply(params, src)
  np.testing.assert_allclose(model.apply(params, src, method=model.classify), out['class_logits'],
                             rtol=1e-6)
  assert out['mlm_logits'].shape == (2, 7, 40)
  with pytest.raises(ValueError, match='num_classes'):
    tf.EncoderModel(cfg.replace(num_classes=0)).apply(params, src, method='classify')


def test_config_validation():
  with pytest.raises(ValueError, match='divisible'):
    tf.ModelConfig(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match='num_kv_heads'):
    tf.ModelConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match='activation'):
    tf.ModelConfig(activation='tanh')
  with pytest.raises(ValueError, match='sinusoid_layout'):
    tf.ModelConfig(sinusoid_layout='blocked')
  with pytest.raises(ValueError, match='token types are for the EncoderModel'):
    tf.DecoderLM(tf.tiny(num_token_types=2)).init(RNG, jnp.ones((1, 4), jnp.int32))


def test_cross_attention_cache_matches_the_full_forward_pass():
  cfg = tf.tiny(vocab_size=40)
  model = tf.Transformer(cfg)
  src = jnp.pad(tokens(11, (2, 6)), ((0, 0), (0, 2)))   # padded source
  tgt = tokens(12, (2, 5))
  params = model.init(RNG, src, tgt)
  full = model.apply(params, src, tgt)
  memory = model.apply(params, src, method=model.decoder_memory)
  assert [k.shape for k in memory['key']] == [(2, cfg.num_heads, cfg.resolved_head_dim, 8)
                                             ] * cfg.resolved_num_decoder_layers
  cache = model.init_cache(2, 5)
  steps = []
  for t in range(5):
    logits, cache = model.apply(params, tgt[:, t:t + 1], cache, memory,
                                method=model.decode_step)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_a_grown_cache_decodes_on_as_the_full_forward_pass():
  """`grow_cache` adds empty slots at the end: decoding fills a short cache, grows it, and
  goes on with the full pass's logits."""
  from transformer.models import grow_cache
  model = tf.DecoderLM(tf.tiny(vocab_size=40))
  seq = tokens(13, (2, 6))
  params = model.init(RNG, seq)
  full = model.apply(params, seq)
  cache = model.init_cache(2, 3)
  steps = []
  for t in range(6):
    if t == 3:
      cache = grow_cache(cache, 6)
    logits, cache = model.apply(params, seq[:, t:t + 1], cache, method=model.decode_step)
    steps.append(logits)
  assert all(k.shape[-1] == 6 for k in cache['key'])
  assert all(v.shape[-2] == 6 for v in cache['value'])
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_sequences_longer_than_max_len_are_rejected():
  model = tf.DecoderLM(tf.tiny(vocab_size=40, max_len=8))
  with pytest.raises(ValueError, match='max_len=8'):
    model.init(RNG, jnp.ones((1, 10), jnp.int32))


def test_attention_weights_are_recorded_on_request():
  cfg = tf.tiny(vocab_size=40, num_layers=1)
  model = tf.Transformer(cfg)
  src, tgt = tokens(13, (2, 6)), tokens(14, (2, 5))
  params = model.init(RNG, src, tgt)
  logits, state = model.apply(params, src, tgt, mutable=['intermediates'])
  np.testing.assert_allclose(logits, model.apply(params, src, tgt), rtol=1e-6)
  layer = state['intermediates']['decoder']['layer_0']
  (cross,) = layer['cross_attention']['attention_weights']
  (self_weights,) = layer['self_attention']['attention_weights']
  assert cross.shape == (2, 4, 5, 6) and self_weights.shape == (2, 4, 5, 5)
  np.testing.assert_allclose(cross.sum(-1), 1.0, rtol=1e-5)
  assert float(jnp.triu(self_weights[0, 0], k=1).max()) == 0.0   # causal
