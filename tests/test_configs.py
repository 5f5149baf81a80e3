"""Every shipped config loads and passes the checks train.py makes before it starts."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from tests.conftest import REPO
from tests.helpers import load_config
from transformer.train import experiment
from transformer.train import optimizer as optimizer_lib
from transformer.train import step as step_lib

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
                     'optim.b1', 'train.num_steps', 'train.eval_every',
                     'train.checkpoint_every'}
  assert fast['train.num_steps'] == fast['optim.decay_steps'] == fast['train.eval_every'] == 1100
  assert set(fast) == set(nanogpt)


def test_fast_multi30k_recipe_trains_the_same_model_on_the_same_data_and_anneals():
  paper, fast = load_config('multi30k_ende'), load_config('multi30k_ende_fast')
  assert fast.model == paper.model and fast.data == paper.data
  assert (fast.train.batch_size, fast.train.label_smoothing) == (
      paper.train.batch_size, paper.train.label_smoothing)
  # Every step of the short run is spent on a schedule that reaches zero at its end, and
  # the checkpoints that `evaluate --average_last 5` averages are all from its decay.
  schedule = optimizer_lib.make_schedule(fast.optim, fast.model.d_model, fast.train.num_steps)
  warmup, steps = fast.optim.warmup_steps, fast.train.num_steps
  assert float(schedule(warmup)) == pytest.approx(fast.optim.learning_rate)
  assert float(schedule(steps)) == 0.0 < float(schedule(steps - 1))
  assert steps - (fast.train.max_to_keep - 1) * fast.train.checkpoint_every > warmup


def test_the_built_initializer_gives_the_models_own_initial_state():
  # `build` traces the initializer once and replays its jaxpr: the state must be the one
  # `model.init` and the optimizer make, with the shapes and shardings `build` promised.
  config = load_config('shakespeare_char')
  config.model.update(num_layers=1, d_model=32, mlp_dim=64)
  exp = experiment.build(config, vocab_size=65)
  state = exp.init_state(jax.random.PRNGKey(3))
  init = step_lib.state_initializer(exp.model, exp.task, exp.optimizer)
  expected = jax.jit(lambda rng: nn.meta.unbox(init(rng)))(jax.random.PRNGKey(3))
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for got, want, shape in zip(jax.tree.leaves(state), jax.tree.leaves(expected),
                              jax.tree.leaves(exp.abstract_state)):
    np.testing.assert_array_equal(got, want)
    assert (got.shape, got.dtype, got.sharding) == (shape.shape, shape.dtype, shape.sharding)
  assert not np.array_equal(state.params['decoder']['layer_0']['mlp']['wi']['kernel'],
                            exp.init_state(jax.random.PRNGKey(4)).params['decoder']['layer_0']
                            ['mlp']['wi']['kernel'])


def test_the_configured_vocabulary_wins_over_the_tokenizers(tmp_path):
  """model.vocab_size set (e.g. padded to divide a mesh axis) is the model's; None means
  the tokenizer's; a checked config builds the same model as an unchecked one."""
  from transformer.train.defaults import base_config
  config = base_config()
  config.data.update(synthetic_train_size=64, synthetic_eval_size=8)
  config.model.update(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_len=32)
  tokenizer_vocab = experiment.build(config, tmp_path / 'a').model_config.vocab_size
  config.model.vocab_size = tokenizer_vocab + 1
  checked = experiment.check_config(config)
  assert checked.model_config.vocab_size == tokenizer_vocab + 1
  for built in (experiment.build(checked, tmp_path / 'b'), experiment.build(config, tmp_path / 'c')):
    assert built.model_config.vocab_size == tokenizer_vocab + 1
    assert built.abstract_state.params['source_embedding']['embedding'].shape[0] == (
        tokenizer_vocab + 1)
