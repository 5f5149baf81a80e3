"""`train.py --compile_for`: the train step compiled for a TPU slice on this CPU host.

Needs libtpu (the `tpu` extra, which `test` pulls); each tiny step compiles once per module.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.helpers import flag_args, tiny_config, tiny_overrides

pytest.importorskip('libtpu', reason="the tpu extra: pip install -e '.[tpu]'")

from transformer.train import plan as plan_lib  # noqa: E402

TOPOLOGY = 'v5e:2x2'
# A one-layer decoder whose shards stay whole TPU tiles (128 lanes) over 4 chips, so that
# the parameters and Adam's moments outweigh the batch and the tile padding; rows of 128
# tokens, 16 to a chip, give the compiler activations worth laying out (see
# test_fsdp_moves_parameters_not_rows).
SIZE = {'model.d_model': 512, 'model.num_heads': 4, 'model.mlp_dim': 512,
        'model.num_layers': 1, 'model.vocab_size': 512, 'model.max_len': 128,
        'data.max_len': 128, 'train.batch_size': 64}


def _config(**mesh):
  config = tiny_config(**SIZE, **{f'mesh.{k}': v for k, v in mesh.items()})
  config.task = 'lm'
  return config


@pytest.fixture(scope='module')
def steps():
  """The same tiny model compiled over data, fsdp and tensor meshes of the 4 chips."""
  meshes = {'data': dict(data=-1, fsdp=1, tensor=1), 'fsdp': dict(data=1, fsdp=4, tensor=1),
            'tensor': dict(data=1, fsdp=1, tensor=4)}
  return {name: plan_lib.compile_step(_config(**mesh), TOPOLOGY)
          for name, mesh in meshes.items()}


@pytest.fixture(scope='module')
def plans(steps):
  return {name: plan_lib.make_plan(step) for name, step in steps.items()}


def test_each_mesh_compiles_for_the_slice(plans):
  for name, plan in plans.items():
    assert plan['device_kind'] == 'TPU v5 lite' and plan['num_devices'] == 4
    assert plan['fits'] and 0 < plan['needed_bytes'] < plan['hbm_bytes']
    assert plan['mesh'][name] == 4
    assert plan['model_flops_per_step'] > 0 and 0 < plan['estimated_mfu'] <= 1
    assert plan['estimated_step_seconds'] > 0
  json.dumps(plans)   # what --plan_json writes


def test_fsdp_divides_the_state_per_chip(plans):
  data, fsdp = plans['data'], plans['fsdp']
  assert 3.8 < data['state_bytes'] / fsdp['state_bytes'] <= 4.0
  # The compiler's own count of the arguments (state and batch, tiles padded) follows.
  assert 3.3 < data['arguments_bytes'] / fsdp['arguments_bytes'] <= 4.05


def test_collectives_the_meshes_need(plans):
  # Data parallel: gradients summed over the replicas; no parameter is gathered.
  assert plans['data']['collectives']['all-reduce'] > 0
  assert plans['data']['collectives']['all-gather'] == 0
  # fsdp: the sharded parameters gathered for the forward pass.
  assert plans['fsdp']['collectives']['all-gather'] > 0
  # Megatron tensor parallelism: the row-parallel projections' partial sums all-reduced.
  assert plans['tensor']['collectives']['all-reduce'] > 0


def test_fsdp_moves_parameters_not_rows(plans):
  # The model pins its residual stream's rows to the batch axes (sharding.constrain_rows):
  # fsdp gathers parameters and leaves each chip its own rows. Unpinned, the compiler split
  # the activations along d_model like the parameters and resharded them with all-to-alls
  # (test below); on 16 chips that held 6x the data-parallel memory (benchmarks/RESULTS.md).
  assert plans['fsdp']['collectives']['all-to-all'] == 0


@pytest.mark.slow
def test_unpinned_rows_are_resharded_under_fsdp(monkeypatch):
  from transformer import layers
  monkeypatch.setattr(layers, 'constrain_rows', lambda x: x)
  plan = plan_lib.compile_plan(_config(data=1, fsdp=4, tensor=1), TOPOLOGY)
  assert plan['collectives']['all-to-all'] > 0


@pytest.mark.slow
def test_a_v4_device_is_one_tensorcore():
  # libtpu's v4 topologies make each of a chip's two TensorCores a device: 'v4:2x2x1' is 4
  # chips, 8 devices, each with half the chip's 32 GiB and half its FLOP/s.
  plan = plan_lib.compile_plan(_config(data=-1), 'v4:2x2x1')
  assert plan['num_devices'] == 8 and plan['num_chips'] == 4
  assert plan['hbm_bytes'] == 16 * 2 ** 30


@pytest.mark.slow
def test_a_scanned_stack_costs_what_it_costs_unrolled():
  # The cost analysis counts a scanned stack's body once; all_layers_cost extrapolates from
  # the step unrolled at 1 and 2 layers. Four layers with full remat, against the same
  # four unrolled (measured: FLOPs to 1e-6, bytes 3% over).
  config = _config(data=-1)
  config.model.update(num_layers=4, remat_policy='full')
  unrolled = plan_lib._cost(plan_lib.compile_step(config, TOPOLOGY).compiled)
  config.model.scan_layers = True
  step = plan_lib.compile_step(config, TOPOLOGY)
  scanned = plan_lib._cost(step.compiled)
  flops, accessed = plan_lib.all_layers_cost(step.config, TOPOLOGY)
  assert scanned[0] < 0.5 * unrolled[0]   # what needs correcting: one layer counted
  assert flops == pytest.approx(unrolled[0], rel=0.01)
  assert accessed == pytest.approx(unrolled[1], rel=0.1)
  plan = plan_lib.make_plan(step, (flops, accessed))
  assert plan['bytes_accessed_all_layers'] == accessed and 0 < plan['estimated_mfu'] <= 1


def test_no_cpu_only_piece_reaches_the_tpu_program(steps):
  for step in steps.values():
    assert step.config.model.cpu_matmul is False
    text = step.lowered.as_text()
    assert 'optimization_barrier' not in text   # transformer.matmul's CPU weight gradient
    assert 'callback' not in step.compiled.as_text().lower()   # host callbacks
  # The check can fail: asked for, the CPU matmul's barriers are in the program.
  *_, lowered = plan_lib.lower_step(_with_cpu_matmul(), TOPOLOGY)
  assert 'optimization_barrier' in lowered.as_text()


def _with_cpu_matmul():
  config = _config(data=-1)
  config.model.cpu_matmul = True
  return config


def _train_py(*args, cwd):
  return subprocess.run([sys.executable, str(REPO / 'train.py'), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': str(REPO)})


@pytest.mark.slow
def test_cli_writes_the_plan_and_touches_nothing_else(tmp_path):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  out = tmp_path / 'plan.json'
  result = _train_py('--config', str(REPO / 'configs' / 'default.py'),
                     *flag_args({**tiny_overrides(), 'mesh.fsdp': 2}),
                     '--compile_for', TOPOLOGY, '--plan_json', str(out), cwd=cwd)
  assert result.returncode == 0, result.stderr
  plan = json.loads(out.read_text())
  for key in ('topology', 'device_kind', 'num_devices', 'mesh', 'arguments_bytes',
              'output_bytes', 'temp_bytes', 'hbm_bytes', 'fits', 'flops_per_step',
              'model_flops_per_step', 'estimated_step_seconds', 'estimated_mfu',
              'collectives', 'compile_seconds'):
    assert key in plan, key
  assert plan['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  assert 'fits' in result.stdout and 'estimated step' in result.stdout
  assert 'libtpu' not in result.stderr.lower() and 'warning' not in result.stderr.lower()
  assert list(cwd.iterdir()) == []   # no runs/ folder, nothing written here


@pytest.mark.slow
def test_a_step_that_cannot_fit_is_one_line_of_advice(tmp_path):
  # The case: the 341M decoder at 1024 rows on 4 chips, whose HLO temporaries the
  # TPU compiler refuses (scanned layers: it says so in seconds). Remat is already on, so
  # the advice leaves it out.
  result = _train_py('--config', str(REPO / 'configs' / 'lm1b_deep.py'),
                     '--config.train.batch_size=1024', '--compile_for', TOPOLOGY, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
  line = lines[0]
  assert line.startswith('error: the train step does not fit v5e:2x2: it needs'), line
  assert 'GiB of temporaries alone per chip' in line
  assert 'chip has 16.00 GiB (15.75 GiB usable)' in line
  assert line.index('more fsdp (--config.mesh.data=1 --config.mesh.fsdp=4)') < line.index(
      '--config.train.grad_accum_steps=2') and 'remat' not in line
  assert list(tmp_path.iterdir()) == []


def test_without_libtpu_one_line_names_the_extra(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real(name, *a))
  with pytest.raises(plan_lib.UserError, match=r"pip install -e '\.\[tpu\]'"):
    plan_lib.get_topology(TOPOLOGY)


@pytest.mark.slow
def test_a_multi_host_slice_compiles_from_one_process():
  config = _config(data=-1)
  config.train.batch_size = 64
  plan = plan_lib.compile_plan(config, 'v5e:8x8')
  assert plan['num_devices'] == 64 and plan['num_hosts'] == 16
  assert plan['mesh']['data'] == 64 and plan['fits']


@pytest.mark.slow
def test_two_slices_over_the_dcn_compile_with_data_across_them():
  plan = plan_lib.compile_plan(_config(data=-1), TOPOLOGY, num_slices=2)
  assert plan['num_devices'] == 8 and plan['num_slices'] == 2
  assert plan['mesh'] == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert plan['collectives']['all-reduce'] > 0
