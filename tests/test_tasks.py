"""The task registry, what each task asks of the data, and its FLOPs against a hand count."""

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

import transformer as tf
from transformer import tasks
from transformer.data.config import default_data_config


def test_registry_knows_the_four_families_and_names_them_on_error():
  assert set(tasks.TASKS) == {'translation', 'lm', 'mlm', 'classification'}
  for name, task in tasks.TASKS.items():
    assert tasks.get_task(name) is task and task.name == name
  with pytest.raises(ValueError, match="unknown task 'tagging'.*'translation'.*'classification'"):
    tasks.get_task('tagging')


def test_data_needs_follow_the_data_config():
  c = default_data_config()
  c.max_len, c.max_source_len = 32, 48
  translation = tasks.get_task('translation').data_needs(c)
  assert {k: (s.column, s.length, s.bos, s.eos) for k, s in translation.sequences.items()} == {
      'inputs': ('source', 48, False, True), 'targets': ('target', 32, False, True)}
  assert translation.columns == ('source', 'target') and translation.packable
  c.tokenizer = 'char'
  assert tasks.get_task('lm').data_needs(c).windows          # lm_format 'auto' + char
  c.lm_format = 'sentences'
  assert not tasks.get_task('lm').data_needs(c).windows
  classification = tasks.get_task('classification').data_needs(c)
  assert classification.label and not classification.packable
  assert classification.columns == ('text', 'label')
  c.lm_format = 'paragraphs'
  with pytest.raises(ValueError, match='lm_format'):
    tasks.get_task('lm').data_needs(c)


def kernel_weights(params, where=lambda path: True) -> int:
  """Weights of the projection kernels whose path passes `where` (2 FLOPs per weight per
  token each)."""
  total = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [k.key for k in path]
    if names[-1] == 'kernel' and where('/'.join(names)):
      total += x.size
  return total


def params_of(model, *args):
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args))['params']


CFG = dict(vocab_size=50, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=24, num_layers=2,
           activation='swiglu')


def test_lm_flops_per_token_by_hand():
  cfg = tf.tiny(**CFG)
  t = 12
  params = params_of(tf.DecoderLM(cfg), jnp.ones((1, t), jnp.int32))
  scores = cfg.num_layers * 2 * 2 * t * cfg.num_heads * cfg.resolved_head_dim   # QK^T and AV
  forward = 2 * kernel_weights(params) + 2 * cfg.d_model * cfg.vocab_size + scores
  assert tasks.get_task('lm').flops_per_token(cfg, {'inputs': t, 'targets': t}) == 3 * forward


def test_translation_flops_per_target_token_by_hand():
  cfg = tf.tiny(**CFG, num_decoder_layers=3)
  s, t = 10, 8
  params = params_of(tf.Transformer(cfg), jnp.ones((1, s), jnp.int32), jnp.ones((1, t), jnp.int32))
  nh = cfg.num_heads * cfg.resolved_head_dim
  per_source_token = (
      2 * kernel_weights(params['encoder'])
      + 2 * kernel_weights(params['decoder'], lambda p: 'cross_attention/key' in p
                           or 'cross_attention/value' in p)
      + cfg.num_layers * 4 * s * nh)
  per_target_token = (
      2 * kernel_weights(params['decoder'], lambda p: not ('cross_attention/key' in p
                                                          or 'cross_attention/value' in p))
      + 3 * (4 * t * nh + 4 * s * nh) + 2 * cfg.d_model * cfg.vocab_size)
  forward = per_source_token * s / t + per_target_token
  got = tasks.get_task('translation').flops_per_token(cfg, {'inputs': s, 'targets': t})
  assert got == pytest.approx(3 * forward, rel=1e-12)


@pytest.mark.parametrize('name', ['mlm', 'classification'])
def test_encoder_flops_per_token_by_hand(name):
  cfg = tf.tiny(**CFG, num_classes=3)
  t = 12
  params = params_of(tf.EncoderModel(cfg), jnp.ones((1, t), jnp.int32))
  forward = (2 * kernel_weights(params['encoder'])
             + cfg.num_layers * 4 * t * cfg.num_heads * cfg.resolved_head_dim)
  if name == 'mlm':   # the MLM head on every token: transform, then the tied output
    forward += 2 * kernel_weights(params['mlm_transform']) + 2 * cfg.d_model * cfg.vocab_size
  assert tasks.get_task(name).flops_per_token(cfg, {'inputs': t}) == 3 * forward
