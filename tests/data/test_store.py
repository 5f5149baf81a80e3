"""The token store: built once (in worker processes for large corpora), memory-mapped,
rebuilt when stale, never left half-written, and built by one process of several."""

import json
import logging
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, task_datasets, xla_env
from transformer.data import sources, store
from transformer.data.config import default_data_config
from transformer.data.tokenizers import CharTokenizer
from transformer.errors import DataError


def corpus(folder, lines=300, bad_line=None):
  """A small parallel corpus {train,valid}.{en,de}; `bad_line`: that train line (1-based)
  of the German side holds bytes that are not UTF-8."""
  folder.mkdir(parents=True, exist_ok=True)
  en = [f'the cat number {i} sat on mat {i % 7}' for i in range(lines)]
  de = [f'die katze nummer {i} sass auf matte {i % 7}' for i in range(lines)]
  (folder / 'train.en').write_text('\n'.join(en) + '\n')
  raw = '\n'.join(de).encode() + b'\n'
  if bad_line:
    parts = raw.split(b'\n')
    parts[bad_line - 1] += b' \xff\xfe'
    raw = b'\n'.join(parts)
  (folder / 'train.de').write_bytes(raw)
  (folder / 'valid.en').write_text('\n'.join(en[:20]) + '\n')
  (folder / 'valid.de').write_text('\n'.join(de[:20]) + '\n')
  return folder


def parallel_config(folder, **changes):
  c = default_data_config()
  c.update({**dict(source='parallel', path=str(folder), src_lang='en', tgt_lang='de',
                   tokenizer='char', max_len=64), **changes})
  return c


def build(config, workdir):
  return task_datasets(config, 'translation', workdir=workdir, global_batch_size=8, seed=0,
                       process_index=0, process_count=1)


def test_built_once_memory_mapped_and_rebuilt_when_the_corpus_changes(tmp_path, caplog):
  folder = corpus(tmp_path / 'corpus')
  with caplog.at_level(logging.WARNING):
    first = build(parallel_config(folder), tmp_path / 'work')
  assert any('no token store yet' in r.getMessage() for r in caplog.records)
  (directory,) = (tmp_path / 'work' / 'data' / 'store').iterdir()
  manifest = json.loads((directory / 'manifest.json').read_text())
  assert manifest['splits']['train'] == ['source', 'target']
  tokens = store.TokenStore.open(directory).splits['train']['source']
  assert isinstance(tokens.flat, np.memmap) and len(tokens) == 300
  expected = first.tokenizer.encode('the cat number 7 sat on mat 0')
  np.testing.assert_array_equal(tokens[7], expected)

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    build(parallel_config(folder), tmp_path / 'work')   # opened, not rebuilt
  assert not any('token store' in r.getMessage() for r in caplog.records)
  assert json.loads((directory / 'manifest.json').read_text()) == manifest

  with (folder / 'train.en').open('a') as f:               # the corpus changes on disk
    f.write('one more line\n')
  with (folder / 'train.de').open('a') as f:
    f.write('eine zeile mehr\n')
  with caplog.at_level(logging.WARNING):
    again = build(parallel_config(folder), tmp_path / 'work')
  assert any('corpus changed on disk' in r.getMessage() for r in caplog.records)
  assert again.info['train_examples'] == 301


def test_worker_processes_tokenize_like_one_process(tmp_path):
  """Several chunks in two spawned workers give the same store as one process."""
  folder = corpus(tmp_path / 'corpus', lines=250)
  source = sources.ParallelFiles(folder, 'en', 'de')
  tokenizer = CharTokenizer('abcdefghijklmnopqrstuvwxyz0123456789 ', specials=True)
  tokenizer.save(tmp_path / 'tok')
  kw = dict(columns=('source', 'target'))
  one = store.build(source, ('train', 'valid'), tmp_path / 'tok', tmp_path / 'one', {},
                    num_workers=1, lines_per_chunk=1000, **kw)
  two = store.build(source, ('train', 'valid'), tmp_path / 'tok', tmp_path / 'two', {},
                    num_workers=2, lines_per_chunk=20, **kw)
  assert json.loads((tmp_path / 'two' / 'manifest.json').read_text())['workers'] == 2
  for split in ('train', 'valid'):
    for column in ('source', 'target'):
      a, b = one.splits[split][column], two.splits[split][column]
      np.testing.assert_array_equal(a.flat, b.flat)
      np.testing.assert_array_equal(a.offsets, b.offsets)


def test_a_worker_error_surfaces_and_leaves_no_store(tmp_path):
  """An undecodable line in a chunk a worker reads: its error, naming file and line, is
  raised in the parent; nothing that looks like a store is left behind."""
  folder = corpus(tmp_path / 'corpus', lines=250, bad_line=203)
  source = sources.ParallelFiles(folder, 'en', 'de')
  tokenizer = CharTokenizer('abcdefghijklmnopqrstuvwxyz0123456789 ', specials=True)
  tokenizer.save(tmp_path / 'tok')
  with pytest.raises(DataError, match=r'train\.de: line 203 is not valid UTF-8'):
    store.build(source, ('train',), tmp_path / 'tok', tmp_path / 'store', {},
                columns=('source', 'target'), num_workers=2, lines_per_chunk=20)
  assert not (tmp_path / 'store').exists() and list(tmp_path.glob('store.tmp-*')) == []


def test_a_full_disk_is_one_clear_error_and_no_store(tmp_path, monkeypatch):
  folder = corpus(tmp_path / 'corpus')
  calls = []

  def full(*args, **kwargs):
    calls.append(args)
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(store, '_concatenate', full)
  with pytest.raises(DataError, match='No space left on device.*disk full'):
    build(parallel_config(folder), tmp_path / 'work')
  assert calls
  store_dir = tmp_path / 'work' / 'data' / 'store'
  assert not any((p / 'manifest.json').exists() for p in store_dir.iterdir())
  monkeypatch.undo()
  assert build(parallel_config(folder), tmp_path / 'work').info['train_examples'] == 300


def test_sentencepiece_trains_on_a_bounded_sample(tmp_path):
  folder = corpus(tmp_path / 'corpus', lines=2000)
  source = sources.ParallelFiles(folder, 'en', 'de')
  sample = source.sample('train', max_chars=5000, seed=0)
  assert 4000 < sum(len(t) for t in sample) < 6000
  assert len(sample) % 2 == 0 and sample != source.sample('train', 5000, seed=1)
  config = parallel_config(folder, tokenizer='sentencepiece', vocab_size=300,
                           tokenizer_sample_chars=5000)
  ds = build(config, tmp_path / 'work')
  assert ds.tokenizer.decode(ds.tokenizer.encode('die katze nummer 1999')) == 'die katze nummer 1999'


MULTI_PROCESS = """
import json, logging, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(coordinator_address='localhost:PORT', num_processes=2,
                           process_id=PROCESS)
from tests.data.test_store import parallel_config
from tests.helpers import task_datasets
messages = []
logging.getLogger().addHandler(type('H', (logging.Handler,), {
    'emit': lambda self, r: messages.append(r.getMessage())})())
ds = task_datasets(parallel_config('CORPUS', num_epochs=1), 'translation', workdir='WORKDIR',
                   global_batch_size=8, seed=0)
pairs = []
for batch in ds.train_iter():
  for row in range(batch['inputs'].shape[0]):
    for s in set(batch['inputs_segment_ids'][row]) - {0}:
      pairs.append(ds.tokenizer.decode(batch['inputs'][row][batch['inputs_segment_ids'][row] == s].tolist()))
print(json.dumps({'built': sum('tokenizing' in m for m in messages), 'pairs': pairs}))
"""


@pytest.mark.slow
def test_processes_build_the_store_once_and_read_their_own_shards(tmp_path):
  folder = corpus(tmp_path / 'corpus')
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  code = (MULTI_PROCESS.replace('PORT', str(port)).replace('CORPUS', str(folder))
          .replace('WORKDIR', str(tmp_path / 'work')))
  env = xla_env(None)
  procs = [subprocess.Popen([sys.executable, '-c', code.replace('PROCESS', str(i))], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    outs.append(json.loads(stdout.strip().splitlines()[-1]))
  assert [o['built'] for o in outs] == [1, 0]               # tokenized once, by process 0
  assert len(list((tmp_path / 'work' / 'data' / 'store').iterdir())) == 1
  first, second = (set(o['pairs']) for o in outs)
  assert not first & second                                  # disjoint shards
  assert len(first | second) == 300 and len(outs[0]['pairs']) == 150
