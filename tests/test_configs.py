"""Every shipped config loads and passes the checks train.py makes before it starts."""

import pytest

from tests.conftest import REPO
from tests.helpers import load_config
from transformer import experiment

CONFIGS = sorted(p.stem for p in (REPO / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_passes_the_start_checks(name):
  experiment.check_config(load_config(name))


def _flat(config) -> dict:
  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, 'items'):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  return dict(walk(config, ''))


def test_fast_shakespeare_recipe_trains_the_same_model_on_the_same_data():
  nanogpt, fast = _flat(load_config('shakespeare_char')), _flat(load_config('shakespeare_char_fast'))
  changed = {k for k in nanogpt if nanogpt[k] != fast[k]}
  assert changed == {'optim.learning_rate', 'optim.warmup_steps', 'optim.decay_steps',
                     'train.num_steps', 'train.eval_every', 'train.checkpoint_every'}
  assert fast['train.num_steps'] == fast['optim.decay_steps'] == 1200
  assert set(fast) == set(nanogpt)
