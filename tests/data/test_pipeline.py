"""Packing, padding, determinism, resumption across processes, sharding, MLM masking."""

import collections
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MULTI30K, require
from tests.helpers import multi30k_config, task_datasets
from transformer.data.config import default_data_config
from transformer.data.mlm import mask_tokens
from transformer.data.tokenizers import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIALS


def synthetic_config(**overrides):
  c = default_data_config()
  c.synthetic_train_size, c.synthetic_eval_size = 300, 37
  c.synthetic_min_len, c.synthetic_max_len = 1, 12
  c.max_len = 24
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def build(config, tmp_path, task='translation', batch=8, seed=0, p=0, P=1):
  return task_datasets(config, task, workdir=tmp_path, global_batch_size=batch, seed=seed,
                       process_index=p, process_count=P)


def unpack(batch, feature, seg_key):
  """Yields the token tuples of every packed segment, checking positions."""
  for row in range(batch[feature].shape[0]):
    segs = batch[seg_key][row]
    pos = batch[seg_key.replace('segment_ids', 'positions')][row]
    assert np.all(batch[feature][row][segs == 0] == 0), 'padding must be 0'
    ids = [s for s in np.unique(segs) if s]
    assert ids == list(range(1, len(ids) + 1)), 'segments are numbered 1, 2, 3...'
    for s in ids:
      where = np.flatnonzero(segs == s)
      assert np.all(np.diff(where) == 1), 'a segment is contiguous'
      np.testing.assert_array_equal(pos[where], np.arange(len(where)))
      yield row, s, tuple(batch[feature][row][where])


def all_segments(batches):
  out = []
  for b in batches:
    src = {(r, s): t for r, s, t in unpack(b, 'inputs', 'inputs_segment_ids')}
    tgt = {(r, s): t for r, s, t in unpack(b, 'targets', 'targets_segment_ids')}
    assert src.keys() == tgt.keys(), 'source and target segments pair up'
    out.extend((src[k], tgt[k]) for k in sorted(src))
  return out


def source_target(ds, split):
  texts = ds.texts(split)
  return texts['source'], texts['target']


def expected_pairs(ds, split_texts):
  tok = ds.tokenizer
  return [(tuple(tok.encode(s)) + (EOS_ID,), tuple(tok.encode(t)) + (EOS_ID,))
          for s, t in zip(*split_texts)]


def test_packing_sees_every_example_once_per_epoch(tmp_path):
  ds = build(synthetic_config(num_epochs=1), tmp_path)
  batches = list(ds.train_iter())
  expected = expected_pairs(ds, source_target(ds, 'train'))
  got = all_segments(batches)
  assert collections.Counter(got) == collections.Counter(expected)
  assert len(got) == 300
  for b in batches:
    assert b['inputs'].shape == (8, 24) and b['inputs'].dtype == np.int32
    assert b['weights'].dtype == np.float32
    # decoder_inputs = bos + targets[:-1] within every segment.
    np.testing.assert_array_equal(b['weights'], (b['targets_segment_ids'] > 0).astype(np.float32))
    starts = (b['targets_positions'] == 0) & (b['targets_segment_ids'] > 0)
    assert np.all(b['decoder_inputs'][starts] == BOS_ID)
    inner = (b['targets_positions'] > 0)
    np.testing.assert_array_equal(b['decoder_inputs'][:, 1:][inner[:, 1:]],
                                  b['targets'][:, :-1][inner[:, 1:]])
  # Rows hold several examples: far fewer rows than examples.
  assert sum(b['inputs'].shape[0] for b in batches) < 300 / 2


def test_second_epoch_is_a_new_order_of_the_same_examples(tmp_path):
  ds = build(synthetic_config(num_epochs=2), tmp_path)
  got = all_segments(ds.train_iter())
  expected = expected_pairs(ds, source_target(ds, 'train'))
  assert collections.Counter(got) == collections.Counter(expected * 2)
  assert got[:300] != got[300:600]


def test_unpacked_training_rows_hold_one_example(tmp_path):
  ds = build(synthetic_config(pack=False, num_epochs=1), tmp_path)
  batches = list(ds.train_iter())
  assert 'inputs_segment_ids' not in batches[0]
  rows = [(tuple(r[r > 0]), tuple(t[t > 0])) for b in batches
          for r, t in zip(b['inputs'], b['targets']) if r.any()]
  assert collections.Counter(rows) == collections.Counter(expected_pairs(ds, source_target(ds, 'train')))
  for b in batches:
    np.testing.assert_array_equal(b['decoder_inputs'][:, 0][b['targets'][:, 0] > 0], BOS_ID)


def test_overlong_drop_and_truncate(tmp_path):
  kw = dict(synthetic_min_len=5, synthetic_max_len=20, max_len=12, num_epochs=1)
  dropped = build(synthetic_config(overlong='drop', **kw), tmp_path / 'a')
  lengths = [len(s) for s in source_target(dropped, 'train')[0]]
  assert dropped.info['train_examples'] == sum(n + 1 <= 12 for n in lengths)
  truncated = build(synthetic_config(overlong='truncate', **kw), tmp_path / 'b')
  assert truncated.info['train_examples'] == 300
  segs = all_segments(truncated.train_iter())
  assert len(segs) == 300 and max(len(s) for s, _ in segs) == 12
  assert all(s[-1] == EOS_ID for s, _ in segs)


def test_eval_batches_cover_every_example_in_order(tmp_path):
  ds = build(synthetic_config(), tmp_path, batch=8)
  batches = list(ds.eval_batches('valid'))
  assert len(batches) == 5  # ceil(37 / 8)
  assert all(b['inputs'].shape == (8, 24) for b in batches)
  assert 'inputs_segment_ids' not in batches[0]
  inputs = np.concatenate([b['inputs'] for b in batches])
  weights = np.concatenate([b['weights'] for b in batches])
  assert np.all(inputs[37:] == 0) and np.all(weights[37:] == 0)
  sources, references = source_target(ds, 'valid')
  assert len(sources) == 37
  tok = ds.tokenizer
  assert [tok.decode(r) for r in inputs[:37]] == sources
  targets = np.concatenate([b['targets'] for b in batches])
  assert [tok.decode(r) for r in targets[:37]] == references
  assert references[0] == sources[0][::-1]  # the default task reverses
  # Fresh and identical each call.
  again = list(ds.eval_batches('valid'))
  np.testing.assert_array_equal(np.concatenate([b['inputs'] for b in again]), inputs)
  # Another evaluation batch size: the same rows, in the same order.
  big = task_datasets(synthetic_config(), 'translation', workdir=tmp_path,
                      global_batch_size=8, eval_batch_size=16, seed=0, process_index=0,
                      process_count=1)
  big_batches = list(big.eval_batches('valid'))
  assert [b['inputs'].shape for b in big_batches] == [(16, 24)] * 3
  np.testing.assert_array_equal(np.concatenate([b['inputs'] for b in big_batches])[:37],
                                inputs[:37])
  assert next(big.train_iter())['inputs'].shape[0] == 8


def test_same_seed_same_batches_other_seed_others(tmp_path):
  take = lambda ds: [next(it) for it in [ds.train_iter()] for _ in range(4)]
  a = take(build(synthetic_config(), tmp_path, seed=3))
  b = take(build(synthetic_config(), tmp_path, seed=3))
  c = take(build(synthetic_config(), tmp_path, seed=4))
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not all(np.array_equal(x['inputs'], z['inputs']) for x, z in zip(a, c))


RESUME_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from tests.helpers import task_datasets
    from transformer.data.config import default_data_config
    config = default_data_config()
    config.update(json.loads(sys.argv[1]))
    ds = task_datasets(config, sys.argv[2], workdir=sys.argv[3], global_batch_size=8,
                       seed=5, process_index=0, process_count=1)
    it = ds.train_iter()
    it.set_state(json.loads(sys.argv[4]))
    batches = [next(it) for _ in range(3)]
    np.savez(sys.argv[5], **{f'{i}/{k}': v for i, b in enumerate(batches) for k, v in b.items()})
''')


@pytest.mark.parametrize('task', ['translation', 'mlm', 'lm'])
def test_iterator_state_resumes_in_a_fresh_process(tmp_path, task):
  fields = dict(synthetic_train_size=300, synthetic_max_len=12, max_len=24, num_epochs=None)
  if task == 'lm':  # character windows over a text file
    text = tmp_path / 'text.txt'
    text.write_text(''.join(f'line {i} of some text\n' for i in range(200)))
    fields = dict(source='text', path=str(text), tokenizer='char', max_len=16)
  config = default_data_config()
  config.update(fields)
  ds = task_datasets(config, task, workdir=tmp_path, global_batch_size=8, seed=5,
                     process_index=0, process_count=1)
  it = ds.train_iter()
  for _ in range(45):  # past the end of the first epoch for the packed tasks
    next(it)
  state = json.dumps(it.get_state())
  expected = [next(it) for _ in range(3)]
  out = tmp_path / 'resumed.npz'
  subprocess.run([sys.executable, '-c', RESUME_SCRIPT, json.dumps(fields), task, str(tmp_path),
                  state, str(out)], check=True, cwd=Path(__file__).resolve().parents[2])
  with np.load(out) as resumed:
    for i, b in enumerate(expected):
      for k, v in b.items():
        np.testing.assert_array_equal(resumed[f'{i}/{k}'], v, err_msg=f'batch {i} {k}')


def test_processes_together_see_every_example_once(tmp_path):
  # One prepared token store, batched for each process (what every host does with its own).
  from transformer.data import datasets as datasets_lib
  from transformer.tasks import get_task
  P, config = 3, synthetic_config(num_epochs=1)
  needs = get_task('translation').data_needs(config)
  prepared = datasets_lib.prepare(config, needs, datasets_lib.folders(config, tmp_path),
                                  seed=0)

  def batches(p, count=P):
    return datasets_lib.make_batches(prepared, config, needs, global_batch_size=6, seed=0,
                                     process_index=p, process_count=count)
  seen = []
  for p in range(P):
    ds = batches(p)
    for b in ds.train_iter():
      assert b['inputs'].shape == (2, 24)  # each process gets its slice of the global batch
    seen.append(all_segments(ds.train_iter()))
  expected = expected_pairs(ds, source_target(ds, 'train'))
  assert collections.Counter(sum(seen, [])) == collections.Counter(expected)
  # Disjoint shards: sizes are 100 each, and the union has no duplicates beyond expected.
  assert [len(s) for s in seen] == [100, 100, 100]
  # Eval: the process slices of each global batch, put together, are the whole batch.
  full = list(batches(0, count=1).eval_batches('valid'))
  parts = [list(batches(p).eval_batches('valid')) for p in range(P)]
  assert all(len(x) == len(full) for x in parts)
  for b, whole in enumerate(full):
    np.testing.assert_array_equal(np.concatenate([parts[p][b]['inputs'] for p in range(P)]),
                                  whole['inputs'])
  # get_datasets is the same three steps.
  np.testing.assert_array_equal(
      next(build(config, tmp_path, batch=6, p=1, P=P).train_iter())['inputs'],
      next(batches(1).train_iter())['inputs'])


def test_mask_tokens_follows_bert_80_10_10():
  rng = np.random.default_rng(0)
  tokens = rng.integers(NUM_SPECIALS, 1000, size=(400, 128))
  tokens[:, 0], tokens[:, -1], tokens[:, -20:-1] = BOS_ID, EOS_ID, 0
  out = mask_tokens(tokens, np.random.default_rng(1), mask_id=MASK_ID, vocab_size=1000,
                    first_real_id=NUM_SPECIALS, mlm_probability=0.15)
  real = tokens >= NUM_SPECIALS
  selected = out['weights'] > 0
  assert not np.any(selected & ~real), 'specials and padding are never selected'
  assert abs(selected.sum() / real.sum() - 0.15) < 0.01
  masked = selected & (out['inputs'] == MASK_ID)
  kept = selected & (out['inputs'] == tokens)
  changed = selected & ~masked & ~kept
  assert abs(masked.sum() / selected.sum() - 0.8) < 0.02
  assert abs(kept.sum() / selected.sum() - 0.1) < 0.02  # (+ random draws equal to the token)
  assert abs(changed.sum() / selected.sum() - 0.1) < 0.02
  assert np.all(out['inputs'][~selected] == tokens[~selected])
  np.testing.assert_array_equal(out['targets'], tokens)
  again = mask_tokens(tokens, np.random.default_rng(1), mask_id=MASK_ID, vocab_size=1000,
                      first_real_id=NUM_SPECIALS)
  np.testing.assert_array_equal(again['inputs'], out['inputs'])


def test_mlm_and_sentence_lm_batches(tmp_path):
  text = tmp_path / 'lines.txt'
  text.write_text(''.join(f'sentence number {i} here\n' for i in range(300)))
  c = synthetic_config(source='text', path=str(text), tokenizer='char', lm_format='sentences',
                       max_len=64, num_epochs=1, valid_fraction=0.1)
  lm = build(c, tmp_path / 'lm', task='lm')
  b = next(lm.train_iter())
  assert set(b) == {'inputs', 'targets', 'weights', 'inputs_segment_ids', 'inputs_positions'}
  starts = (b['inputs_positions'] == 0) & (b['inputs_segment_ids'] > 0)
  assert np.all(b['inputs'][starts] == BOS_ID)
  inner = b['inputs_positions'][:, 1:] > 0
  np.testing.assert_array_equal(b['inputs'][:, 1:][inner], b['targets'][:, :-1][inner])
  ends = np.zeros_like(starts)
  ends[:, :-1] = starts[:, 1:]
  ends |= (b['inputs_segment_ids'] > 0) & (np.roll(b['inputs_segment_ids'], -1, 1) == 0)
  assert np.all(b['targets'][ends & (b['inputs_segment_ids'] > 0)] == EOS_ID)
  mlm = build(c, tmp_path / 'mlm', task='mlm', batch=16)
  batches = list(mlm.train_iter())
  weights = np.concatenate([x['weights'].ravel() for x in batches])
  targets = np.concatenate([x['targets'].ravel() for x in batches])
  inputs = np.concatenate([x['inputs'].ravel() for x in batches])
  real = targets >= NUM_SPECIALS
  assert abs(weights[real].mean() - 0.15) < 0.03
  assert np.all(weights[~real] == 0)
  assert np.all(inputs[weights == 0] == targets[weights == 0])
  assert abs((inputs[weights > 0] == MASK_ID).mean() - 0.8) < 0.05
  assert mlm.tokenizer.mask_id == MASK_ID < mlm.vocab_size


def test_multi30k_packed_pipeline(multi30k_workdir):
  require(MULTI30K)
  ds = task_datasets(multi30k_config(), 'translation', workdir=multi30k_workdir,
                     global_batch_size=32, seed=0, process_index=0, process_count=1)
  assert ds.splits == ('train', 'valid', 'test')
  it = ds.train_iter()
  b = next(it)
  assert b['inputs'].shape == (32, 64)
  assert (b['targets'] > 0).mean() > 0.8, 'packing fills the rows'
  sources, references = source_target(ds, 'valid')
  assert len(sources) == 1014 and sources[0].startswith('A group of men')
  assert ds.tokenizer.decode(next(iter(ds.eval_batches('valid')))['targets'][0]) == references[0]
  # The token ids are stored in the workdir once, and memory-mapped.
  (store,) = (multi30k_workdir / 'data' / 'store').iterdir()
  assert (store / 'manifest.json').is_file()
  assert isinstance(ds.eval_batches('valid')._arrays['inputs'], np.ndarray)
  assert list(store.glob('train.source.tokens.npy'))


def test_a_url_workdirs_folders_are_this_hosts_and_its_tokenizer_is_published(tmp_path):
  from transformer.data import datasets as datasets_lib
  config = synthetic_config()
  with pytest.raises(ValueError, match='local_dir'):
    datasets_lib.folders(config, 'gs://bucket/run')    # a bucket holds no memory map
  where = datasets_lib.folders(config, 'gs://bucket/run', local_dir=tmp_path,
                               process_index=1, process_count=2)
  assert (where.data, where.tokenizer) == (tmp_path / 'process-1' / 'data',
                                           tmp_path / 'process-1' / 'tokenizer')
  assert str(where.published) == 'gs://bucket/run/tokenizer'
  local = datasets_lib.folders(config, tmp_path / 'run')
  assert (local.data, local.tokenizer, local.published) == (
      tmp_path / 'run' / 'data', tmp_path / 'run' / 'tokenizer', None)
