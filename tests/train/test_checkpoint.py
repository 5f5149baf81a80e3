"""Checkpoint retention: the newest `max_to_keep` plus the best by the chosen metric."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer.train import checkpoint as checkpoint_lib


def test_max_to_keep_keeps_the_newest_and_the_best(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints', max_to_keep=2,
                                             best_metric='eval/loss', asynchronous=False)
  losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0, 5: 5.0}
  for step, loss in losses.items():
    state = {'w': jnp.full((2,), float(step))}
    checkpointer.save(step, state, {'next_index': step}, {'step': step},
                      metrics={'eval/loss': loss})
  checkpointer.wait()
  assert checkpointer.all_steps() == [2, 4, 5]   # best (2) + newest two
  restored, data, config = checkpointer.restore(2, {'w': jnp.zeros((2,))})
  np.testing.assert_array_equal(restored['w'], [2.0, 2.0])
  assert data == {'next_index': 2} and config == {'step': 2}


def test_without_a_best_metric_only_the_newest_are_kept(tmp_path):
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints', max_to_keep=2,
                                             asynchronous=False)
  for step in range(1, 5):
    checkpointer.save(step, {'w': jnp.zeros(1)}, {}, {}, metrics={'eval/loss': 1.0 / step})
  checkpointer.wait()
  assert checkpointer.all_steps() == [3, 4]


LAYOUT_CHANGE = """
import jax, json, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from transformer import models
from transformer.train import checkpoint as checkpoint_lib

mesh = jax.make_mesh((4,), ('fsdp',))
split = NamedSharding(mesh, P(None, 'fsdp'))        # a scanned leaf: [layers, rows split]
scanned = {'params': {'decoder': {'layers': {'w': jax.device_put(
    np.arange(3 * 8 * 2, dtype=np.float32).reshape(3, 8, 2), split)}, 'norm': np.ones(2)}}}
checkpointer = checkpoint_lib.Checkpointer('TMP/checkpoints', asynchronous=False)
checkpointer.save(1, scanned, {}, {'model': {'scan_layers': True}})
layer = NamedSharding(mesh, P('fsdp'))            # the run's: each layer's rows split
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
    x.shape, x.dtype, sharding=layer if x.ndim == 2 else NamedSharding(mesh, P())),
    models.unscan_params(scanned))
seen = []
restore = checkpointer._restore
checkpointer._restore = lambda step, abstract: seen.append(abstract) or restore(step, abstract)
state, _, _ = checkpointer.restore(1, target, scan_layers=False)
w = seen[0]['params']['decoder']['layers']['w']
print(json.dumps({
    'saved_shard_rows': w.sharding.shard_shape(w.shape)[1],
    'rows': [np.asarray(state['params']['decoder'][f'layer_{i}']['w']).tolist()
             for i in range(3)],
    'expected': np.asarray(scanned['params']['decoder']['layers']['w']).tolist(),
    'shardings_kept': all(state['params']['decoder'][f'layer_{i}']['w'].sharding == layer
                          for i in range(3))}))
"""


def test_a_layout_change_restores_sharded_not_whole(tmp_path):
  """A scanned checkpoint restored into an unrolled run: the stacked leaf is read split as
  the run's layers are (2 of its 8 rows per device), never whole on every device."""
  from tests.helpers import last_json_line, run_python
  out = last_json_line(run_python(LAYOUT_CHANGE.replace('TMP', str(tmp_path)), devices=4))
  assert out['saved_shard_rows'] == 2
  assert out['rows'] == out['expected'] and out['shardings_kept']


def _suspended_reads() -> list[str]:
  """Orbax's restore coroutines that are suspended (neither finished nor closed)."""
  import gc
  import types
  # type(), not isinstance: a lazily imported module among the objects would import itself.
  return [o.__name__ for o in gc.get_objects() if type(o) is types.CoroutineType
          and o.cr_frame is not None and 'orbax' in o.cr_code.co_filename]


def test_a_failed_restore_leaves_no_read_suspended(tmp_path):
  """Orbax closed a failed restore's event loop with its other reads still suspended; the
  garbage collector destroyed them later wherever it ran, which could deadlock (a
  two-process fallback from a damaged checkpoint hung). The checkpointer's loop cancels
  and awaits them first."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  split = NamedSharding(jax.make_mesh((jax.device_count(),), ('x',)), P('x'))
  state = {f'w{i}': jax.device_put(jnp.arange(1 << 16, dtype=jnp.float32) + i, split)
           for i in range(4)}
  checkpointer = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints', asynchronous=False)
  checkpointer.save(1, state, {}, {})
  # The largest data file cut in half: some reads fail while others are in flight (on
  # Orbax's own loop, 2 restores in 3 left some suspended).
  largest = max((tmp_path / 'checkpoints' / '1' / 'state' / 'd').iterdir(),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  for _ in range(4):
    with pytest.raises(Exception):   # noqa: B017 - whatever Orbax raises for the cut file
      checkpointer.restore_state(1, abstract)
    assert _suspended_reads() == []
