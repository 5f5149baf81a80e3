"""benchmarks/gpu_check.py --smoke: the prepared GPU check, tiny, on the CPU."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow   # compiles a train step and two decoding loops
def test_gpu_check_smoke_runs_every_part(tmp_path):
  out = tmp_path / 'check.json'
  result = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', '--smoke', '--steps', '2',
                           '--json', str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['backend'] == 'cpu'
  (train,) = report['train']
  assert train['attention_impl'] == 'xla' and train['step_ms'] > 0 and 0 < train['mfu'] < 1
  assert train['program_bytes'] > 0 and train['parameters'] > 0
  assert report['skipped'] == [{'attention_impl': 'cudnn', 'why': 'cuDNN needs a GPU'}]
  decode = report['decode']
  assert decode['cached_tokens_per_sec'] > 0 and decode['uncached_tokens_per_sec'] > 0
  assert decode['same_tokens'] == 1.0    # float32: greedy with and without the cache agree
  assert 'train, xla attention:' in result.stdout and 'decode (2 rows' in result.stdout


def _gpu_check():
  spec = importlib.util.spec_from_file_location('gpu_check', REPO / 'benchmarks' / 'gpu_check.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('attention', ['xla', 'cudnn'])
def test_the_checks_own_steps_export_for_cuda(attention):
  """The check's 341M train step (bfloat16, scanned, full remat) lowers for CUDA on this
  host, with cuDNN's fused attention in the 'cudnn' one (forward, remat's recomputation,
  backward)."""
  from tests.train.test_export import require_cudnn
  from transformer.train import export as export_lib
  if attention == 'cudnn':
    require_cudnn()
  exported = export_lib.export_train_step(_gpu_check().check_config(False, attention))
  assert exported.in_avals[-1].shape == (128, 256)    # the batch's weights
  calls = export_lib.custom_calls(exported)
  assert (set(export_lib.CUDNN_CALLS) <= calls) == (attention == 'cudnn'), calls
