"""`train.profile_steps`: a jax.profiler trace of chosen train steps in workdir/profile."""

from tests.helpers import tiny_config
from transformer.train import train_and_evaluate


def test_profile_steps_writes_a_trace_of_the_train_step(tmp_path):
  config = tiny_config(**{'train.num_steps': 4, 'train.eval_every': 4,
                          'train.checkpoint_every': 4, 'train.profile_steps': (1, 2)})
  train_and_evaluate(config, tmp_path)
  traces = list((tmp_path / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1, traces
  assert b'train_step' in traces[0].read_bytes()   # the jitted step's name is in the trace


def test_profiling_is_off_by_default(tmp_path):
  from transformer.train.defaults import base_config
  from transformer.train.profile import StepProfiler
  profiler = StepProfiler(tmp_path / 'profile', *base_config().train.profile_steps)
  for step in range(3):
    profiler.before(step)
    profiler.after(step + 1, None)
  assert not profiler.active and not (tmp_path / 'profile').exists()
