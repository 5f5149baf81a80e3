"""The TFDS catalog path, without network: TFDS mock data and a tiny local builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import task_datasets
from transformer.data.config import default_data_config


class TinyTranslate(tfds.core.GeneratorBasedBuilder):
  """A catalog-style translation builder (de, en) like wmt14_translate/de-en."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.Translation(languages=('de', 'en')),
        supervised_keys=('de', 'en'))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(40), 'validation': self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'de': f'Hallo Welt {i}', 'en': f'hello world {i}'}


def tfds_config(name, **overrides):
  c = default_data_config()
  c.source, c.tfds_name, c.tokenizer, c.max_len = 'tfds', name, 'char', 32
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


@pytest.mark.parametrize('reverse', [False, True])
def test_tfds_translation_builder_and_direction(tmp_path, reverse):
  ds = task_datasets(tfds_config('tiny_translate', reverse_translation=reverse), 'translation',
                     workdir=tmp_path, global_batch_size=4, seed=0, process_index=0, process_count=1)
  assert ds.splits == ('train', 'valid')
  texts = ds.texts('valid')
  sources, references = texts['source'], texts['target']
  assert len(sources) == 5
  for source, reference in zip(sources, references):  # TFDS shuffles the record order
    german, english = f'Hallo Welt {source[-1]}', f'hello world {source[-1]}'
    assert (source, reference) == ((english, german) if reverse else (german, english))
  b = next(iter(ds.eval_batches('valid')))
  assert ds.tokenizer.decode(b['inputs'][0]) == sources[0]
  assert list((tmp_path / 'data' / 'tiny_translate').rglob('*.array_record*'))


def test_tfds_mock_lm1b_packed_sentences(tmp_path):
  with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = task_datasets(tfds_config('lm1b', num_epochs=1, lm_format='sentences'), 'lm', workdir=tmp_path,
                       global_batch_size=4, seed=0, process_index=0, process_count=1)
  batches = list(ds.train_iter())
  assert 'inputs_segment_ids' in batches[0]
  num_sentences = ds.info['train_examples']  # mock sentences, less any empty ones
  assert 20 < num_sentences <= 30
  assert sum(int(b['inputs_segment_ids'].max(1).sum()) for b in batches) == num_sentences


def test_tfds_mock_glue_sst2_classification(tmp_path):
  import tensorflow_datasets.text.glue  # noqa: F401  (registers glue without TensorFlow)
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = task_datasets(tfds_config('glue/sst2'), 'classification', workdir=tmp_path,
                       global_batch_size=4, seed=0, process_index=0, process_count=1)
  b = next(ds.train_iter())
  assert set(b) == {'inputs', 'label', 'weights'}
  assert b['inputs'].shape == (4, 32) and b['label'].shape == (4,)
  assert np.all(b['inputs'][:, 0] == ds.tokenizer.bos_id)
  evals = list(ds.eval_batches('valid'))
  assert len(evals) == 3 and evals[-1]['weights'].tolist() == [1, 1, 0, 0]


def test_catalog_names_resolve_without_tensorflow(tmp_path):
  """wmt14, lm1b and glue builders are found by name (their families get registered)."""
  from transformer.data.sources import catalog_builder
  wmt = catalog_builder('wmt14_translate/de-en', tmp_path)
  assert tuple(wmt.info.supervised_keys) == ('de', 'en')
  assert catalog_builder('lm1b', tmp_path).name == 'lm1b'
  assert catalog_builder('glue/sst2', tmp_path).builder_config.name == 'sst2'
