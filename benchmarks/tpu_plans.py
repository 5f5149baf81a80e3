"""Will the shipped configs fit a TPU slice, and how fast could a step be? One table.

For each config and slice, the train step is compiled for the slice on this host
(`transformer.train.plan`, libtpu: `pip install -e '.[tpu]'`) over two meshes: data parallel
(every chip holds the whole state) and fully sharded (fsdp over every chip). Per chip: the
memory the compiler counts (arguments + outputs not aliased + temporaries), whether it fits,
and the roofline estimate of step time and MFU from the chip's data sheet (an estimate to
compare by, not a measurement: see plan.py). The mesh picked is the data-parallel one when it fits
within 90% of the chip's HBM (no parameter gathers), else the fsdp one.

    python benchmarks/tpu_plans.py [--configs lm1b lm1b_deep] [--topologies v5e:4x4]
                                   [--aot_check] [--json plans.json]

Without --configs and --topologies: every shipped config on v5e-16 and v6e-16, and the
deepest (lm1b_deep) on the 16-chip v4 and v5p slices as well (`v4:2x2x4`: libtpu makes each of a v4's two
TensorCores a device, so 32 devices with half a chip's HBM each). `--json` writes every
plan (or refusal) as compiled, for figures the table leaves out.

`--aot_check` also compiles lm1b_deep's fsdp step on v5e:4x4 by hand (jit with the
experiment's shardings, outside plan.py) and prints how its arguments + temporaries
compare with the plan's.
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformer import platforms  # noqa: E402

platforms.skip_absent_accelerators()

import jax  # noqa: E402

from transformer.errors import UserError  # noqa: E402
from transformer.train import plan as plan_lib  # noqa: E402
from transformer.train.defaults import config_from_file  # noqa: E402

CONFIGS = ('wmt14_ende_base', 'wmt14_ende_big', 'lm1b', 'lm1b_deep')
TOPOLOGIES = ('v5e:4x4', 'v6e:4x4')
# The other 16-chip slices for the biggest model only: each compile takes minutes here.
EXTRA = (('lm1b_deep', 'v4:2x2x4'), ('lm1b_deep', 'v5p:2x2x4'))
MESHES = {'data': dict(data=-1, fsdp=1, tensor=1), 'fsdp': dict(data=1, fsdp=-1, tensor=1)}
GiB = 2 ** 30


def load(name, mesh):
  config = config_from_file(ROOT / 'configs' / f'{name}.py')
  config.mesh.update(mesh)
  return config


def row(name, topology, mesh_name):
  try:
    plan = plan_lib.compile_plan(load(name, MESHES[mesh_name]), topology)
  except plan_lib.DoesNotFit as error:
    return {'mesh_name': mesh_name, 'fits': False, 'error': str(error)}
  return {'mesh_name': mesh_name, **plan}


def aot_check():
  """lm1b_deep, fsdp 16 on v5e:4x4: the plan against a compile made here by hand."""
  from transformer.train import experiment as experiment_lib
  config = load('lm1b_deep', MESHES['fsdp'])
  plan = plan_lib.compile_plan(config, 'v5e:4x4')
  _, mesh, experiment, lowered = plan_lib.lower_step(config, 'v5e:4x4')
  del lowered
  batch = plan_lib.abstract_batch(config, experiment.task, mesh, 1, 32_000)
  from transformer import sharding
  # Traced over the mesh as a run's step is (the model pins its activations' rows).
  step = jax.jit(sharding.within_mesh(experiment.train_fn, mesh),
                 in_shardings=(experiment.state_sharding,
                                                     sharding.batch_sharding(mesh)),
                 out_shardings=(experiment.state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0)
  memory = step.lower(experiment.abstract_state, batch).compile().memory_analysis()
  by_hand = memory.argument_size_in_bytes + memory.temp_size_in_bytes
  planned = plan['arguments_bytes'] + plan['temp_bytes']
  print(f'lm1b_deep v5e:4x4 fsdp 16: arguments + temporaries per chip: plan '
        f'{planned / GiB:.3f} GiB, separate AOT compile {by_hand / GiB:.3f} GiB '
        f'({planned / by_hand - 1:+.1%})')
  del experiment_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', nargs='+')
  parser.add_argument('--topologies', nargs='+')
  parser.add_argument('--aot_check', action='store_true')
  parser.add_argument('--json', help='write every plan here')
  args = parser.parse_args()
  pairs = [(c, t) for c in args.configs or CONFIGS for t in args.topologies or TOPOLOGIES]
  if args.configs is None and args.topologies is None:
    pairs = sorted(pairs + list(EXTRA), key=lambda p: CONFIGS.index(p[0]))
  start = time.perf_counter()
  plans = []
  print('| config | slice | mesh | GiB per device (of HBM) | fits | est. step ms | est. MFU '
        '| collectives | picked |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name, topology in pairs:
    rows = [row(name, topology, m) for m in MESHES]
    plans += [{'config': name, 'topology': topology, **r} for r in rows]
    fitting = [r for r in rows if r['fits'] and r['needed_bytes'] <= 0.9 * r['hbm_bytes']]
    picked = fitting[0]['mesh_name'] if fitting else None
    for r in rows:
      mesh = (' '.join(f'{k}={v}' for k, v in r['mesh'].items()) if 'mesh' in r
              else r['mesh_name'])
      if 'error' in r:
        print(f'| {name} | {topology} | {mesh} | does not fit: {r["error"]} | no | | | | |')
        continue
      collectives = ', '.join(f'{k} {v}' for k, v in r['collectives'].items() if v)
      print(f'| {name} | {topology} | {mesh} | {r["needed_bytes"] / GiB:.2f} '
            f'({r["hbm_bytes"] / GiB:.0f}) | {"yes" if r["fits"] else "no"} | '
            f'{r["estimated_step_seconds"] * 1e3:.1f} | {r["estimated_mfu"]:.0%} | '
            f'{collectives} | {"**yes**" if picked == r["mesh_name"] else ""} |',
            flush=True)
  print(f'({time.perf_counter() - start:.0f} s)')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(plans, indent=1))
  if args.aot_check:
    aot_check()


if __name__ == '__main__':
  try:
    main()
  except UserError as error:
    sys.exit(f'error: {error}')
