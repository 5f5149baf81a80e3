"""The prepared GPU check: one script, at most 8 minutes on one H100.

The 341M-parameter decoder of configs/lm1b_deep.py (24 layers, d_model 1024, bfloat16
compute over float32 parameters, scanned layers, full remat, 256-token rows, batch 128) on
random tokens, on one device:

1. the train step (the trainer's jitted, donated step) with cuDNN's fused attention and
   with XLA's (`model.attention_impl` 'cudnn' and 'xla'; unpacked rows, whose causal and
   padding mask is what cuDNN takes): compile time, step time, tokens/s and MFU, model
   FLOPs from the task's `flops_per_token` against the device's data-sheet bf16 peak
   (`metrics.device_peak_flops`), and the compiled program's own memory;
2. greedy decoding tokens/s, cached (`inference.generate`) against uncached
   (`inference.greedy_uncached`: the whole prefix again at every step), and whether the
   two chose the same tokens;
3. the device's peak memory over the run (`memory_stats()['peak_bytes_in_use']`).

A part that fails is a row with its error, the others still run, and the exit status is 1.

    python benchmarks/gpu_check.py [--steps 20] [--json PATH]
    python benchmarks/gpu_check.py --smoke    # a tiny model on the CPU, in seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def check_config(smoke: bool, attention: str):
  """configs/lm1b_deep.py on one device, unpacked rows, with `attention`."""
  from transformer.train.defaults import config_from_file
  config = config_from_file(REPO / 'configs' / 'lm1b_deep.py')
  config.model.update(attention_impl=attention)
  config.data.update(pack=False)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  if smoke:
    # float32: XLA's CPU backend has no fast bfloat16 matmul; a vocabulary as configured,
    # since the tokenizer is never trained here.
    config.model.update(d_model=64, num_heads=2, mlp_dim=128, num_layers=2, max_len=32,
                        dtype='float32', vocab_size=256)
    config.data.update(max_len=32)
    config.train.update(batch_size=4)
  return config


def random_batch(shapes: dict, vocab: int, seed: int = 0) -> dict:
  """Random real tokens in every position of the batch's token arrays; weights of one."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return {k: (rng.integers(5, vocab, s.shape) if np.issubdtype(s.dtype, np.integer)
              else np.ones(s.shape)).astype(s.dtype) for k, s in shapes.items()}


def train_figures(config, steps: int):
  """(figures, experiment, state after the steps) of `config`'s train step."""
  import jax
  from transformer.train import experiment as experiment_lib
  from transformer.train import metrics, plan
  from transformer.train.strategy import JitStrategy
  experiment = experiment_lib.build(config, vocab_size=plan.vocab_size(config))
  strategy = JitStrategy(experiment.mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn)
  vocab = experiment.model_config.vocab_size
  shapes = plan.abstract_batch(config, experiment.task, experiment.mesh, 1, vocab)
  batch = strategy.put_batch(random_batch(shapes, vocab))
  state = experiment.init_state(experiment.rng)
  start = time.perf_counter()
  step = strategy.train.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = step.memory_analysis()
  state, out = step(state, batch)   # the first run: allocations, autotuning
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch)
  loss = float(out['loss'])           # waits for the last step
  step_s = (time.perf_counter() - start) / steps
  lengths = experiment.task.sequence_lengths(config.data)
  tokens = config.train.batch_size * lengths.get('targets', lengths['inputs'])
  flops = experiment.task.flops_per_token(experiment.model_config, lengths) * tokens
  peak, peak_source = metrics.device_peak_flops()
  figures = {
      'attention_impl': config.model.attention_impl,
      'parameters': sum(x.size for x in jax.tree.leaves(state.params)),
      'batch': f'{config.train.batch_size} x {config.data.max_len}',
      'compile_s': compile_s, 'step_ms': step_s * 1e3, 'tokens_per_sec': tokens / step_s,
      'mfu': flops / step_s / peak, 'peak_flops': peak, 'peak_source': peak_source,
      'program_bytes': (memory.argument_size_in_bytes + memory.output_size_in_bytes
                        - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      'loss': loss}
  return figures, experiment, state


def decode_figures(experiment, params, smoke: bool) -> dict:
  """Greedy tokens/s, cached against uncached, one timed run each after compiling."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from transformer import inference
  rows, prompt_length, new = (2, 4, 8) if smoke else (8, 32, 128)
  vocab = experiment.model_config.vocab_size
  prompt = jnp.asarray(np.random.default_rng(1).integers(5, vocab, (rows, prompt_length)),
                       jnp.int32)
  model, variables = experiment.model, {'params': params}
  runs = {  # eos_id=-1: every row decodes all `new` tokens
      'cached': lambda: inference.generate(model, variables, prompt, max_new_tokens=new,
                                           temperature=0.0, eos_id=-1),
      'uncached': lambda: inference.greedy_uncached(model, variables, prompt,
                                                    max_new_tokens=new, eos_id=-1)}
  out, tokens = {'rows': rows, 'prompt': prompt_length, 'new_tokens': new}, {}
  for name, run in runs.items():
    jax.block_until_ready(run())     # compile
    start = time.perf_counter()
    tokens[name] = np.asarray(run())
    out[f'{name}_tokens_per_sec'] = rows * new / (time.perf_counter() - start)
  out['cached_over_uncached'] = out['cached_tokens_per_sec'] / out['uncached_tokens_per_sec']
  # bfloat16 logits can break a near tie differently on the two paths.
  out['same_tokens'] = float((tokens['cached'] == tokens['uncached']).mean())
  return out


def _bytes(n) -> str:
  if n is None:
    return 'n/a'
  return f'{n / 2 ** 30:.2f} GiB' if n >= 2 ** 30 else f'{n / 2 ** 20:.1f} MiB'


def train_line(row: dict) -> str:
  if 'error' in row:
    return f'train, {row["attention_impl"]} attention: FAILED: {row["error"]}'
  return (f'train, {row["attention_impl"]} attention: {row["step_ms"]:.1f} ms/step, '
          f'{row["tokens_per_sec"]:,.0f} tokens/s, MFU {row["mfu"]:.1%} of '
          f'{row["peak_flops"] / 1e12:.3g} TFLOP/s ({row["peak_source"]}); compiled in '
          f'{row["compile_s"]:.1f} s, program {_bytes(row["program_bytes"])}; '
          f'{row["parameters"] / 1e6:.1f}M parameters, batch {row["batch"]}, '
          f'loss {row["loss"]:.3f}')


def table(report: dict) -> str:
  lines = [f'device: {report["device"]} ({report["backend"]}), jax {report["jax"]}']
  lines += [train_line(row) for row in report['train']]
  for row in report['skipped']:
    lines.append(f'train, {row["attention_impl"]} attention: not run ({row["why"]})')
  decode = report['decode']
  if 'error' in decode:
    lines.append(f'decode: FAILED: {decode["error"]}')
  elif decode:
    lines.append(
        f'decode ({decode["rows"]} rows, {decode["prompt"]}-token prompts, '
        f'{decode["new_tokens"]} new, greedy): cached {decode["cached_tokens_per_sec"]:,.0f} '
        f'tokens/s, uncached {decode["uncached_tokens_per_sec"]:,.0f} '
        f'({decode["cached_over_uncached"]:.1f}x); same tokens {decode["same_tokens"]:.0%}')
  lines.append(f'peak device memory: {_bytes(report["peak_bytes_in_use"])}')
  lines.append(f'total: {report["total_s"]:.0f} s')
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true', help='a tiny model on the CPU')
  parser.add_argument('--steps', type=int, default=20, help='timed train steps')
  parser.add_argument('--json', help='also write the report here')
  args = parser.parse_args()
  start = time.perf_counter()
  import jax
  if args.smoke:
    jax.config.update('jax_platforms', 'cpu')
  else:
    from transformer import platforms
    platforms.skip_absent_accelerators()
  device = jax.devices()[0]
  report = {'device': device.device_kind, 'backend': jax.default_backend(),
            'jax': jax.__version__, 'train': [], 'skipped': [], 'decode': {}}
  gpu = jax.default_backend() == 'gpu'
  experiment = params = None
  for attention in ('cudnn', 'xla'):
    if attention == 'cudnn' and not gpu:
      report['skipped'].append({'attention_impl': attention, 'why': 'cuDNN needs a GPU'})
      continue
    try:
      figures, experiment, state = train_figures(check_config(args.smoke, attention),
                                                 args.steps)
      params = state.params
    except Exception as error:   # the check's other parts still run
      figures = {'attention_impl': attention, 'error': f'{type(error).__name__}: '
                 f'{str(error).splitlines()[0] if str(error) else ""}'}
    report['train'].append(figures)
    print(train_line(figures), flush=True)   # as it goes: the table repeats it at the end
  if experiment is not None:
    try:
      report['decode'] = decode_figures(experiment, params, args.smoke)
    except Exception as error:
      report['decode'] = {'error': f'{type(error).__name__}: {str(error).splitlines()[0]}'}
  report['peak_bytes_in_use'] = (device.memory_stats() or {}).get('peak_bytes_in_use')
  report['total_s'] = time.perf_counter() - start
  print(table(report))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
  failed = any('error' in row for row in report['train']) or 'error' in report['decode']
  return 1 if failed or experiment is None else 0


if __name__ == '__main__':
  sys.exit(main())
