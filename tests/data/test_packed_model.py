"""A packed batch through a model gives the same logits as each example alone."""

import jax
import numpy as np
import pytest

from tests.helpers import task_datasets
from transformer import models
from transformer.config import ModelConfig
from transformer.data.config import default_data_config


def packed_batch(tmp_path, task):
  c = default_data_config()
  c.synthetic_train_size, c.synthetic_min_len, c.synthetic_max_len, c.max_len = 200, 2, 9, 24
  ds = task_datasets(c, task, workdir=tmp_path, global_batch_size=2, seed=0,
                     process_index=0, process_count=1)
  b = next(ds.train_iter())
  assert b['inputs_segment_ids'].max() >= 3, 'the test needs rows holding several examples'
  return ds, b


def alone_row(tokens, length):
  """One example at the start of a row of pads (one shape for every example: one compile)."""
  row = np.zeros((1, length), np.int32)
  row[0, :len(tokens)] = tokens
  return row


def segments(seg):
  for row in range(seg.shape[0]):
    for s in np.unique(seg[row]):
      if s:
        yield row, s, np.flatnonzero(seg[row] == s)


@pytest.mark.parametrize('position', ['sinusoidal', 'rope'])
def test_packed_translation_equals_examples_alone(tmp_path, position):
  ds, b = packed_batch(tmp_path, 'translation')
  cfg = ModelConfig(vocab_size=ds.vocab_size, d_model=32, num_heads=4, mlp_dim=64, num_layers=2,
                    max_len=64, position=position)
  model = models.Transformer(cfg)
  params = model.init(jax.random.key(0), b['inputs'], b['decoder_inputs'])
  apply = jax.jit(model.apply)
  packed = model.apply(params, b['inputs'], b['decoder_inputs'],
                       inputs_positions=b['inputs_positions'],
                       inputs_segment_ids=b['inputs_segment_ids'],
                       decoder_positions=b['targets_positions'],
                       decoder_segment_ids=b['targets_segment_ids'])
  checked = 0
  for row, s, t_idx in segments(b['targets_segment_ids']):
    s_idx = np.flatnonzero(b['inputs_segment_ids'][row] == s)
    alone = apply(params, alone_row(b['inputs'][row, s_idx], 24),
                  alone_row(b['decoder_inputs'][row, t_idx], 24))
    np.testing.assert_allclose(packed[row, t_idx], alone[0, :len(t_idx)], atol=2e-4, rtol=2e-4)
    checked += 1
  assert checked >= 3


def test_packed_lm_equals_examples_alone(tmp_path):
  ds, b = packed_batch(tmp_path, 'lm')
  cfg = ModelConfig(vocab_size=ds.vocab_size, d_model=32, num_heads=4, mlp_dim=64, num_layers=2,
                    max_len=64, position='learned')
  model = models.DecoderLM(cfg)
  params = model.init(jax.random.key(1), b['inputs'])
  apply = jax.jit(model.apply)
  packed = model.apply(params, b['inputs'], positions=b['inputs_positions'],
                       segment_ids=b['inputs_segment_ids'])
  # Without segment ids the examples would see each other: the test can fail.
  leaky = model.apply(params, b['inputs'], positions=b['inputs_positions'])
  differs = False
  for row, s, idx in segments(b['inputs_segment_ids']):
    alone = apply(params, alone_row(b['inputs'][row, idx], 24))[0, :len(idx)]
    np.testing.assert_allclose(packed[row, idx], alone, atol=2e-4, rtol=2e-4)
    differs |= not np.allclose(leaky[row, idx], alone, atol=2e-4)
  assert differs
