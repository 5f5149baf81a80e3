"""Compiles a run's train step for a TPU slice this host does not have, and says whether it fits.

    python train.py --config configs/lm1b_deep.py --compile_for v5e:4x4 [--plan_json P]

With libtpu installed (`pip install -e '.[tpu]'`), JAX compiles for a TPU topology on a CPU
host (`jax.experimental.topologies`). `compile_plan` compiles the step a run would execute:
the same `experiment.check_config` and `build` (model, optimizer, state shardings, remat,
dtypes), the same jit strategy with `train.steps_per_call`, over the config's mesh laid on
the slice's chips (-1 takes the rest of them), with batches shaped like the data pipeline's.
The TPU compiler's `memory_analysis()` gives the bytes per chip; the figures of time are a
roofline *estimate* from the chip's data sheet (`transformer.chips`):

    compute = model FLOPs per chip / peak bf16 FLOP/s
    memory  = bytes the program accesses per chip / HBM bandwidth
    estimated_step_seconds = max(compute, memory);  estimated_mfu = compute / that

Model FLOPs come from the task's `flops_per_token` (full rows: packed data), not from the
compiled program, whose `cost_analysis()` counts a loop's body once (scanned layers,
`steps_per_call`). For a scanned stack the bytes accessed are counted as if unrolled:
`all_layers_cost` compiles the step unrolled at 1 and 2 layers and extrapolates to the
config's depth (on a 4-layer model it matches the unrolled program's FLOPs to 1e-6 and its
bytes to 3%). Loops still counted once (`steps_per_call`; under fsdp the compiler's
windowed dot_generals, collective matmuls over permutes) scale the bytes by the FLOPs'
undercount: counted FLOPs below the model's are a loop's sign, since the program does at
least the model's.
Collectives are counted (by kind, each instruction once, loop bodies once) but not timed,
and the bytes are the compiler's count, not a profile's. So the estimate errs both ways: a
figure to compare meshes and chips by, not a measurement.

A step that does not fit (the compiler refuses, or the plan exceeds the chip's HBM) raises
`DoesNotFit`, a `UserError`: one line with the bytes needed per chip against the chip's and
the cheapest fixes in order.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import importlib.util
import math
import os
import re
import time
import types
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from transformer import chips, sharding
from transformer.errors import ConfigError, UserError

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
WARN_FRACTION = 0.9       # of the chip's HBM: a plan above it fits with a warning
_COLLECTIVE = re.compile(r'\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')


class DoesNotFit(UserError):
  """The step needs more memory per chip than the chip has."""


def _quiet_libtpu() -> None:
  """libtpu looks for TPU workers of this host when it loads; there are none here."""
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  # Compiling holds no chip: several such processes (tests, other users) may load libtpu.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def get_topology(name: str, num_slices: int = 1):
  """The compile-only devices of a TPU topology such as 'v5e:4x4' (`num_slices` of them,
  joined over the data-center network)."""
  if importlib.util.find_spec('libtpu') is None:
    raise UserError("--compile_for needs libtpu: install the extra, pip install -e '.[tpu]'")
  chip = chips.chip_for_topology(name)
  if chip is None:
    raise UserError(f'--compile_for={name}: give a TPU topology such as v5e:4x4 (chips: '
                    f'{", ".join(chips.TPU_CHIPS)})')
  _quiet_libtpu()
  from jax.experimental import topologies
  try:
    if num_slices > 1:
      return topologies.get_topology_desc(platform='tpu', topology_name=name,
                                          num_slices=num_slices)
    return topologies.get_topology_desc(platform='tpu', topology_name=name)
  except (jax.errors.JaxRuntimeError, ValueError, RuntimeError) as error:
    raise UserError(f'--compile_for={name}: libtpu made no such TPU topology '
                    f'({str(error).splitlines()[0]}); e.g. v5e:2x2, v5e:4x4, v6e:4x4, '
                    'v4:2x2x2') from error


def slice_mesh(mesh_config: dict[str, int], devices, num_slices: int = 1) -> Mesh:
  """The config's mesh over all of the slice's chips, laid out along its torus; over
  several slices, the data axis spans them (only its gradient sum crosses the DCN)."""
  from jax.experimental import mesh_utils
  sizes = sharding.make_mesh(mesh_config, devices=devices).devices.shape
  if math.prod(sizes) != len(devices):
    raise ConfigError(f'config.mesh {mesh_config} uses {math.prod(sizes)} of the slice\'s '
                      f'{len(devices)} chips: make one axis -1 or multiply to {len(devices)}')
  if num_slices > 1:
    if sizes[0] % num_slices:
      raise ConfigError(f'config.mesh data={sizes[0]} does not split over {num_slices} '
                        'slices: the data axis spans the slices')
    ici = (sizes[0] // num_slices, *sizes[1:])
    grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), list(devices))
  elif _cores_per_chip(devices) > 1:
    # A v4's TensorCores as devices: mesh_utils lays out only one device per chip
    # ("megacore"), so the mesh takes them in libtpu's order, a chip's two cores adjacent.
    grid = np.asarray(list(devices)).reshape(sizes)
  else:
    grid = mesh_utils.create_device_mesh(sizes, list(devices))
  return Mesh(grid, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes))


def vocab_size(config) -> int:
  """The model's vocabulary without building the data: the config's, else the tokenizer's
  as configured (SentencePiece's `data.vocab_size`, the synthetic alphabet's)."""
  if config.model.vocab_size:
    return config.model.vocab_size
  if config.data.tokenizer == 'sentencepiece':
    return config.data.vocab_size
  if config.data.tokenizer == 'synthetic':
    from transformer.data.tokenizers import synthetic_tokenizer
    return synthetic_tokenizer(config.data.synthetic_vocab).vocab_size
  raise ConfigError(f'data.tokenizer={config.data.tokenizer!r}: its vocabulary is known only '
                    'once trained; give --config.model.vocab_size for --compile_for')


def abstract_batch(config, task, mesh: Mesh, steps_per_call: int, vocab: int) -> dict:
  """ShapeDtypeStructs of a global train batch as the pipeline builds it (its finalize run
  on zeros), placed like `sharding.global_batch`'s."""
  needs = task.data_needs(config.data)
  rows = config.train.batch_size
  batch = {}
  for name, spec in needs.sequences.items():
    ids = np.full((rows, spec.length), 5, np.int32)
    batch.update({name: ids, f'{name}_segment_ids': np.ones_like(ids),
                  f'{name}_positions': np.zeros_like(ids)})
  if needs.label:
    batch['label'] = np.zeros((rows,), np.int32)
  tokenizer = types.SimpleNamespace(pad_id=0, bos_id=1, eos_id=2, unk_id=3, mask_id=4,
                                    vocab_size=vocab)
  packed = bool(config.data.pack) and needs.packable
  batch = needs.finalize(batch, packed=packed, rng=np.random.default_rng(0),
                         tokenizer=tokenizer)
  if not packed:
    batch = {k: v for k, v in batch.items() if not k.endswith(('_segment_ids', '_positions'))}
  spec = sharding.batch_sharding(mesh).spec
  lead = (steps_per_call,) if steps_per_call > 1 else ()
  return {k: jax.ShapeDtypeStruct(
      lead + v.shape, v.dtype,
      sharding=NamedSharding(mesh, P(*((None,) * len(lead)), *spec[:v.ndim])))
          for k, v in batch.items()}


def count_collectives(hlo_text: str) -> dict[str, int]:
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def model_flops_per_step(experiment, config) -> float:
  """The task's FLOPs per token x the tokens of `steps_per_call` full batches."""
  lengths = experiment.task.sequence_lengths(config.data)
  tokens = config.train.batch_size * lengths.get('targets', lengths['inputs'])
  per_token = experiment.task.flops_per_token(experiment.model_config, lengths)
  return per_token * tokens * config.train.steps_per_call


def _gib(n: float) -> str:
  return f'{n / chips.GiB:.2f} GiB'


def _compiler_bytes(message: str) -> tuple[float | None, float | None]:
  """(bytes needed, bytes available) in the compiler's RESOURCE_EXHAUSTED message, e.g.
  'the total memory required for HLO temporaries (24.05G) exceeds available HBM (15.75G)'."""
  sizes = [float(m.group(1)) * 1024 ** ' KMGT'.index(m.group(2))
           for m in re.finditer(r'(\d+(?:\.\d+)?)([KMGT])\b', message)]
  if not sizes:
    return None, None
  return sizes[0], (sizes[-1] if len(sizes) > 1 else None)


def fixes(config, mesh: Mesh) -> list[str]:
  """The cheapest changes that cut the memory per chip, in order."""
  shape, n = dict(mesh.shape), mesh.devices.size
  out = []
  if shape['fsdp'] < n // shape['tensor']:
    out.append(f'more fsdp (--config.mesh.data=1 --config.mesh.fsdp={n // shape["tensor"]})')
  if config.model.remat_policy in (None, 'none') or config.model.get('remat') is False:
    out.append('a remat policy (--config.model.remat_policy=full, or dots_saveable)')
  accum = config.train.grad_accum_steps
  shards = shape['data'] * shape['fsdp']
  if config.train.batch_size // (accum * shards) > 1:
    out.append(f'a smaller per-chip batch (now {config.train.batch_size // (accum * shards)} '
               f'rows: --config.train.grad_accum_steps={accum * 2})')
  return out or ['a bigger slice or a chip with more HBM']


def _refuse(needed: float | None, chip: chips.Chip, kind: str, config, mesh: Mesh,
            topology_name: str, available: float | None = None) -> DoesNotFit:
  need = f'needs {_gib(needed)} per chip' if needed else 'needs more memory per chip'
  if available:   # the compiler's figure: its temporaries alone
    need = f'needs {_gib(needed)} of temporaries alone per chip'
  usable = f' ({_gib(available)} usable)' if available else ''
  return DoesNotFit(
      f'the train step does not fit {topology_name}: it {need}, a {kind} chip has '
      f'{_gib(chip.hbm_bytes)}{usable}; cheapest fixes in order: '
      f'{"; ".join(fixes(config, mesh))}')


@dataclasses.dataclass
class CompiledStep:
  """A config's train step compiled for a TPU slice, with what made it."""

  topology_name: str
  num_slices: int
  chip: chips.Chip
  config: Any                 # the config as compiled (cpu_matmul resolved)
  mesh: Mesh
  experiment: Any             # experiment.Experiment
  lowered: Any
  compiled: Any
  compile_seconds: float


def for_accelerator(config, refusal: str):
  """A copy of `config` as compiled here for another platform (a TPU slice, a GPU): the
  'jit' strategy (else a `ConfigError` that starts with `refusal`), and `model.cpu_matmul`
  None, which means "on a CPU backend" as this host may be, resolved to False."""
  if config.parallelism != 'jit':
    raise ConfigError(f"{refusal} the 'jit' strategy, not config.parallelism="
                      f'{config.parallelism!r}: set --config.parallelism=jit')
  config = copy.deepcopy(config)
  with config.unlocked():
    if config.model.get('cpu_matmul') is None:
      config.model.cpu_matmul = False
  return config


def lower_step(config, topology_name: str, num_slices: int = 1):
  """(config as compiled, mesh, experiment, lowered train step) for the TPU slice."""
  from transformer.train import experiment as experiment_lib
  from transformer.train.strategy import JitStrategy

  config = for_accelerator(config, '--compile_for compiles')
  topology = get_topology(topology_name, num_slices)
  mesh = slice_mesh(config.mesh.to_dict(), topology.devices, num_slices)
  checked = experiment_lib.check_config(config, mesh=mesh)
  vocab = vocab_size(config)
  experiment = experiment_lib.build(checked, vocab_size=vocab)
  steps_per_call = config.train.steps_per_call
  strategy = JitStrategy(mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn, steps_per_call)
  batch = abstract_batch(config, checked.task, mesh, steps_per_call, vocab)
  return config, mesh, experiment, strategy.train.lower(experiment.abstract_state, batch)


def _chip_of(device) -> tuple[int, ...]:
  return (getattr(device, 'slice_index', 0), *device.coords)


def _cores_per_chip(devices) -> int:
  return max(collections.Counter(map(_chip_of, devices)).values())


def per_device(chip: chips.Chip, devices) -> chips.Chip:
  """The chip's figures per JAX device: a v4's two TensorCores are two devices in libtpu's
  topologies ('v4:2x2x2' is 8 chips, 16 devices), each with half the HBM and half the
  FLOP/s; a v5e, v5p or v6e chip is one device."""
  cores = _cores_per_chip(devices)
  if cores == 1:
    return chip
  return dataclasses.replace(chip, hbm_bytes=chip.hbm_bytes // cores,
                             hbm_bytes_per_second=chip.hbm_bytes_per_second / cores,
                             peak_bf16_flops=chip.peak_bf16_flops / cores)


def _compile(lowered):
  # Never through the persistent compilation cache: a program for a TPU this host does
  # not have would be written there and later fail to load without a TPU client.
  cache_was_on = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    return lowered.compile()
  finally:
    jax.config.update('jax_enable_compilation_cache', cache_was_on)


def _cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of a compiled program, by the compiler's cost analysis."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


def all_layers_cost(config, topology_name: str, num_slices: int = 1
                    ) -> tuple[float, float] | None:
  """(FLOPs, bytes accessed) per call of a scanned model's step with every layer counted.

  The cost analysis counts a loop's body once, so a scanned stack's program shows one
  layer's cost. The same step unrolled at 1 and 2 layers (two small compiles over the same
  mesh) gives the cost outside the layers plus one layer, and one layer's own (the
  difference, its optimizer update included): all L layers are c(1) + (L - 1) (c(2) - c(1)).
  None when there is no stack loop to correct (an unscanned model), or when the encoder
  and decoder stacks differ in depth.
  """
  model = config.model
  depth = model.num_layers
  decoder_depth = model.get('num_decoder_layers')
  if not model.get('scan_layers') or (decoder_depth and decoder_depth != depth):
    return None
  costs = []
  for layers in (1, 2):
    variant = copy.deepcopy(config)
    with variant.unlocked():
      variant.model.scan_layers = False
      variant.model.num_layers = layers
      if decoder_depth:
        variant.model.num_decoder_layers = layers
      variant.train.steps_per_call = 1   # its own loop: the same count per step
    *_, lowered = lower_step(variant, topology_name, num_slices)
    costs.append(np.array(_cost(_compile(lowered))))
  one, two = costs
  flops, accessed = (one + (depth - 1) * (two - one)) * config.train.steps_per_call
  return float(flops), float(accessed)


def compile_step(config, topology_name: str, num_slices: int = 1) -> CompiledStep:
  """Compiles the train step; raises `DoesNotFit` when the compiler runs out of HBM."""
  config, mesh, experiment, lowered = lower_step(config, topology_name, num_slices)
  chip = per_device(chips.chip_for_topology(topology_name), mesh.devices.flat)
  start = time.perf_counter()
  try:
    compiled = _compile(lowered)
  except jax.errors.JaxRuntimeError as error:
    if 'RESOURCE_EXHAUSTED' not in str(error):
      raise
    needed, available = _compiler_bytes(str(error).split('RESOURCE_EXHAUSTED', 1)[1])
    raise _refuse(needed, chip, mesh.devices.flat[0].device_kind, config, mesh,
                  topology_name, available) from None
  return CompiledStep(topology_name, num_slices, chip, config, mesh, experiment, lowered,
                      compiled, time.perf_counter() - start)


def make_plan(step: CompiledStep, all_layers: tuple[float, float] | None = None
              ) -> dict[str, Any]:
  """The plan of a compiled step (per chip unless named otherwise); `all_layers`: the
  step's (FLOPs, bytes accessed) with every scanned layer counted (`all_layers_cost`)."""
  config, experiment, chip, mesh = step.config, step.experiment, step.chip, step.mesh
  memory = step.compiled.memory_analysis()
  program_flops, program_bytes = _cost(step.compiled)
  devices = list(mesh.devices.flat)
  n = mesh.devices.size
  needed = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  model_flops = model_flops_per_step(experiment, config) / n
  counted_flops, accessed = all_layers or (program_flops, program_bytes)
  if 0 < counted_flops < model_flops:
    # Loop bodies still counted once: `steps_per_call`'s loop, and the compiler's own
    # loops (under fsdp its windowed dot_generals, collective matmuls over permutes: a
    # scanned lm1b_deep counted all-layers does 0.74x its model FLOPs, 1.25x with data).
    accessed *= model_flops / counted_flops
  compute_s = model_flops / chip.peak_bf16_flops
  step_s = max(compute_s, accessed / chip.hbm_bytes_per_second)
  steps_per_call = config.train.steps_per_call
  leaves = jax.tree.leaves(experiment.abstract_state.params)
  return {
      'topology': step.topology_name, 'device_kind': mesh.devices.flat[0].device_kind,
      'num_devices': n, 'num_hosts': len({d.process_index for d in devices}),
      'num_chips': len(set(map(_chip_of, devices))),
      'num_slices': step.num_slices,
      'mesh': dict(mesh.shape),
      'arguments_bytes': memory.argument_size_in_bytes,
      'output_bytes': memory.output_size_in_bytes,
      'alias_bytes': memory.alias_size_in_bytes,
      'temp_bytes': memory.temp_size_in_bytes,
      'needed_bytes': needed,
      'hbm_bytes': chip.hbm_bytes,
      'fits': needed <= chip.hbm_bytes,
      # The train state's bytes per chip by its shardings (before the TPU's tile padding).
      'state_bytes': sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                         for x in jax.tree.leaves(experiment.abstract_state)),
      'parameters': sum(x.size for x in leaves),
      'parameter_bytes_total': sum(x.size * x.dtype.itemsize for x in leaves),
      'flops_per_step': program_flops,
      'bytes_accessed': program_bytes,   # the program's, loop bodies once
      # With every scanned layer counted (None: no stack loop corrected).
      'flops_all_layers': all_layers[0] if all_layers else None,
      'bytes_accessed_all_layers': all_layers[1] if all_layers else None,
      'model_flops_per_step': model_flops,
      'steps_per_call': steps_per_call,
      'estimated_step_seconds': step_s / steps_per_call,
      'estimated_mfu': compute_s / step_s if step_s else 0.0,
      'estimate': 'roofline from the data sheet: max(model FLOPs / peak bf16, bytes accessed '
                  '/ HBM bandwidth); collectives not timed',
      'collectives': count_collectives(step.compiled.as_text()),
      'compile_seconds': step.compile_seconds,
  }


def compile_plan(config, topology_name: str, num_slices: int = 1) -> dict[str, Any]:
  """Compiles `config`'s train step for the TPU slice `topology_name` (e.g. 'v5e:4x4') and
  returns its plan; raises `DoesNotFit` (a `UserError`) when it needs more than the chip's
  HBM, `ConfigError` for a config that cannot run."""
  step = compile_step(config, topology_name, num_slices)
  plan = make_plan(step, all_layers_cost(step.config, topology_name, num_slices))
  if not plan['fits']:
    raise _refuse(plan['needed_bytes'], step.chip, plan['device_kind'], step.config,
                  step.mesh, topology_name)
  return plan


def table(plan: dict[str, Any]) -> str:
  """The plan for a reader: a few lines."""
  mesh = ' '.join(f'{k}={v}' for k, v in plan['mesh'].items())
  used = plan['needed_bytes'] / plan['hbm_bytes']
  collectives = ', '.join(f'{k} {v}' for k, v in plan['collectives'].items() if v) or 'none'
  rows = [
      ('slice', f'{plan["topology"]}'
                f'{" x " + str(plan["num_slices"]) + " slices" if plan["num_slices"] > 1 else ""}'
                f': {plan["num_devices"]} x {plan["device_kind"]} '
                f'({plan["num_hosts"]} host(s)), mesh {mesh}'),
      ('memory per chip', f'{_gib(plan["needed_bytes"])} of {_gib(plan["hbm_bytes"])} '
                          f'({used:.0%}): arguments {_gib(plan["arguments_bytes"])}, '
                          f'temporaries {_gib(plan["temp_bytes"])}'),
      ('fits', 'yes' if plan['fits'] else 'no'),
      ('model FLOPs per chip', f'{plan["model_flops_per_step"]:.3g} per compiled call '
                               f'({plan["steps_per_call"]} step(s)); program: '
                               + (f'{plan["flops_all_layers"]:.3g} with every layer, '
                                  if plan.get('flops_all_layers') else '')
                               + f'{plan["flops_per_step"]:.3g} loop bodies once'),
      ('estimated step', f'{plan["estimated_step_seconds"] * 1e3:.3g} ms, MFU '
                         f'{plan["estimated_mfu"]:.0%} (roofline estimate, not measured)'),
      ('collectives', collectives),
      ('compiled in', f'{plan["compile_seconds"]:.1f} s'),
  ]
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def warning(plan: dict[str, Any]) -> str | None:
  """A line when the plan fits with under 10% of the chip's memory to spare."""
  used = plan['needed_bytes'] / plan['hbm_bytes']
  if used > WARN_FRACTION:
    return (f'warning: {used:.0%} of the chip\'s HBM: XLA and the runtime keep some for '
            'themselves; a change of shape may not fit')
  return None
