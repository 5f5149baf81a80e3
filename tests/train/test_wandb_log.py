"""train.wandb_project: the train and eval metrics in a W&B run (offline here), named after
the workdir, continued by a resumed run; wandb asked for and missing is one line."""

import json
import os
import pathlib

import pytest

from tests.helpers import REPO, tiny_overrides, train_py, xla_env
from transformer.train import wandb_log
from transformer.train.defaults import base_config


def run_records(run_file) -> list[bytes]:
  """The records of a W&B run file: a 7-byte header (':W&B', magic, version), then blocks of
  32 KiB holding LevelDB-log chunks (crc32, length, type: full, or first/middle/last of a
  record split over blocks)."""
  import struct
  data = pathlib.Path(run_file).read_bytes()
  assert data[:4] == b':W&B', data[:7]
  records, pending, offset, block = [], b'', 7, 32768
  while offset + 7 <= len(data):
    if block - offset % block < 7:              # a block's tail too short for a header
      offset += block - offset % block
      continue
    _, length, kind = struct.unpack('<IHB', data[offset:offset + 7])
    if kind == 0 and length == 0:
      break
    chunk = data[offset + 7:offset + 7 + length]
    offset += 7 + length
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      records.append(pending)
      pending = b''
  return records


def history(run_file) -> list[dict]:
  """The logged rows ({'_step': ..., metric: value}) of an offline W&B run file."""
  from wandb.proto import wandb_internal_pb2
  rows = []
  for data in run_records(run_file):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(data)
    if record.WhichOneof('record_type') == 'history':
      rows.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item})
  return rows


def offline_runs(workdir):
  return sorted((workdir / 'wandb').glob('offline-run-*/run-*.wandb'))


def test_an_offline_run_holds_the_metrics_and_a_resumed_run_continues_it(tmp_path):
  workdir = tmp_path / 'digits'
  env = {**xla_env(1), 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true',
         'WANDB_CONFIG_DIR': str(tmp_path / 'wandb_config'), 'WANDB_CACHE_DIR': str(tmp_path)}
  overrides = {**tiny_overrides(), 'train.num_steps': 6, 'train.log_every': 2,
               'train.eval_every': 3, 'train.checkpoint_every': 3,
               'train.wandb_project': 'transformer-tests'}
  result = train_py(workdir, overrides, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  run_id = (workdir / wandb_log.RUN_ID_FILE).read_text().strip()
  [first] = offline_runs(workdir)
  assert first.name == f'run-{run_id}.wandb'
  rows = history(first)
  steps = {}
  for row in rows:                                 # a step's rows (train, eval) together
    steps.setdefault(row['_step'], {}).update(row)
  assert {2, 4, 6} <= set(steps)
  assert all(steps[s]['train/loss'] > 0 for s in (2, 4, 6))
  assert sorted(s for s in steps if 'eval/loss' in steps[s]) == [3, 6]
  assert steps[6]['eval/loss'] > 0 and 'eval/accuracy' in steps[6]

  # Resumed to step 8: the same W&B run (same id and name), the new steps in it.
  result = train_py(workdir, {**overrides, 'train.num_steps': 8}, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from step 6' in result.stdout
  runs = offline_runs(workdir)
  assert len(runs) == 2 and all(r.name == f'run-{run_id}.wandb' for r in runs)
  second = next(r for r in runs if r != first)
  assert {row['_step'] for row in history(second) if 'train/loss' in row} == {8}


def test_wandb_asked_for_and_missing_is_one_line(tmp_path):
  # A wandb that cannot be imported: a module named wandb that raises ImportError.
  fake = tmp_path / 'fake'
  fake.mkdir()
  (fake / 'wandb.py').write_text('raise ImportError("no wandb here")\n')
  env = xla_env(1)
  env['PYTHONPATH'] = f'{fake}{os.pathsep}{env["PYTHONPATH"]}'
  workdir = tmp_path / 'run'
  result = train_py(workdir, {**tiny_overrides(), 'train.num_steps': 2,
                              'train.wandb_project': 'p'}, env=env)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1:] == [
      "error: train.wandb_project='p' needs wandb, which is not installed: pip install "
      "'transformer[wandb]' (or pip install wandb), or leave train.wandb_project empty"], (
          result.stderr[-2000:])
  assert not workdir.exists()


def test_without_a_project_the_writer_is_untouched(tmp_path):
  writer = object()
  assert wandb_log.attach(writer, base_config(), tmp_path) is writer
  assert not (tmp_path / wandb_log.RUN_ID_FILE).exists()
