"""Deep models: compile time with scanned against unrolled layers, and a big model's memory
under each remat policy and dtype. Prints two tables.

1. The train step of a decoder-only LM of width 256 (4 heads, MLP 1024, vocabulary 8000,
   16 rows of 128 tokens) at 4, 12, 24 and 48 layers, unrolled and scanned: seconds to
   trace, lower and compile the jitted step (each in a fresh process, no persistent
   compilation cache), and the state's initialisation likewise.
2. `compiled.memory_analysis()` of the paper's big encoder-decoder (Table 3, 6+6 layers,
   d_model 1024, 37000 shared tokens) train step on 64 rows of 64 source + 64 target
   tokens (4096 target tokens), scanned layers, for each remat policy in float32 and
   bfloat16 compute: the compiler's temporary buffers (activations kept for the backward
   pass and workspace), and the arguments (state and batch).
3. Cached greedy decoding (`inference.generate`: prefill, then 32 new tokens per row, 4
   rows of 8-token prompts) of the same LM at 12 and 48 layers, unrolled and scanned:
   seconds to trace, lower and compile. A scanned model decodes by scanning its layers
   over the stacked KV cache, so its program holds one layer step whatever the depth.

    python benchmarks/scale.py [--depths 4 12 24 48] [--decode_depths 12 48]
                               [--skip_compile] [--skip_memory] [--skip_decode]
"""

import argparse
import json
import os
import subprocess
import sys
import time

REMAT = ('none', 'dots_saveable', 'dots_with_no_batch_dims_saveable', 'save_attention_out',
         'full')


def base_config(task: str):
  from transformer.train.defaults import base_config as defaults
  c = defaults()
  c.task = task
  c.train.batch_size = 16
  return c


def compile_child(layers: int, scan: bool) -> dict:
  import jax
  from transformer import sharding
  from transformer.train import experiment
  from transformer.train.strategy import JitStrategy

  c = base_config('lm')
  c.model.update(d_model=256, num_heads=4, mlp_dim=1024, num_layers=layers, max_len=128,
                 dropout_rate=0.0, scan_layers=scan, pre_norm=True, position='rope')
  c.data.update(max_len=128)
  start = time.perf_counter()
  exp = experiment.build(c, vocab_size=8000)
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  init = exp.init_state.lower(jax.random.PRNGKey(0)).compile()
  init_s = time.perf_counter() - start
  strategy = JitStrategy(exp.mesh, exp.state_sharding, exp.train_fn, exp.eval_fn)
  batch = {k: jax.ShapeDtypeStruct((16, 128), dtype, sharding=sharding.batch_sharding(exp.mesh))
           for k, dtype in (('inputs', 'int32'), ('targets', 'int32'), ('weights', 'float32'))}
  start = time.perf_counter()
  strategy.train.lower(exp.abstract_state, batch).compile()
  step_s = time.perf_counter() - start
  del init
  return {'layers': layers, 'scan': scan, 'step_s': step_s, 'init_s': init_s,
          'build_s': build_s}


def decode_child(layers: int, scan: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  from transformer import inference
  from transformer.config import ModelConfig
  from transformer.models import DecoderLM

  cfg = ModelConfig(vocab_size=8000, d_model=256, num_heads=4, mlp_dim=1024,
                    num_layers=layers, max_len=128, pre_norm=True, position='rope',
                    scan_layers=scan)
  model = DecoderLM(cfg)
  prompts = jax.ShapeDtypeStruct((4, 8), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), prompts)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nn.meta.unbox(params))
  start = time.perf_counter()
  inference.generate.lower(model, params, prompts, max_new_tokens=32,
                           temperature=0.0).compile()
  return {'decode_s': time.perf_counter() - start}


def memory_child(policy: str, dtype: str) -> dict:
  import jax
  from transformer import sharding
  from transformer.train import experiment
  from transformer.train.strategy import JitStrategy

  c = base_config('translation')
  c.model.update(d_model=1024, num_heads=16, mlp_dim=4096, num_layers=6, max_len=256,
                 dropout_rate=0.3, scan_layers=True, remat_policy=policy, dtype=dtype)
  c.train.batch_size = 64
  c.data.update(max_len=64)
  exp = experiment.build(c, vocab_size=37000)
  strategy = JitStrategy(exp.mesh, exp.state_sharding, exp.train_fn, exp.eval_fn)
  spec = lambda dt: jax.ShapeDtypeStruct((64, 64), dt, sharding=sharding.batch_sharding(exp.mesh))
  batch = {'inputs': spec('int32'), 'decoder_inputs': spec('int32'), 'targets': spec('int32'),
           'weights': spec('float32')}
  analysis = strategy.train.lower(exp.abstract_state, batch).compile().memory_analysis()
  params = sum(x.size for x in jax.tree.leaves(exp.abstract_state.params))
  return {'policy': policy, 'dtype': dtype, 'temp': analysis.temp_size_in_bytes,
          'arguments': analysis.argument_size_in_bytes, 'output': analysis.output_size_in_bytes,
          'params': params}


def child(kind: str, *args) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  out = subprocess.run([sys.executable, __file__, '--child', json.dumps([kind, *args])],
                       env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depths', type=int, nargs='+', default=[4, 12, 24, 48])
  parser.add_argument('--skip_compile', action='store_true')
  parser.add_argument('--skip_memory', action='store_true')
  parser.add_argument('--decode_depths', type=int, nargs='+', default=[12, 48])
  parser.add_argument('--skip_decode', action='store_true')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    kind, *rest = json.loads(args.child)
    children = {'compile': compile_child, 'memory': memory_child, 'decode': decode_child}
    print(json.dumps(children[kind](*rest)))
    return

  import jax
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'{os.cpu_count()} cores')
  if not args.skip_compile:
    print('\nDecoderLM d_model 256, train step of 16 x 128 tokens: seconds to compile')
    print(f'{"layers":>6} {"unrolled step":>14} {"scanned step":>13} {"ratio":>6} '
          f'{"unrolled init":>14} {"scanned init":>13}')
    for layers in args.depths:
      unrolled, scanned = child('compile', layers, False), child('compile', layers, True)
      print(f'{layers:>6} {unrolled["step_s"]:>14.1f} {scanned["step_s"]:>13.1f} '
            f'{scanned["step_s"] / unrolled["step_s"]:>6.2f} {unrolled["init_s"]:>14.1f} '
            f'{scanned["init_s"]:>13.1f}', flush=True)
  if not args.skip_memory:
    print('\nTable-3 big (6+6 layers, d_model 1024, V 37000), scanned, 64 x (64 + 64) tokens:'
          ' compiled.memory_analysis()')
    print(f'{"remat_policy":>34} {"dtype":>9} {"temp GiB":>9} {"vs none":>8} '
          f'{"arguments GiB":>14}')
    baseline = {}
    for dtype in ('float32', 'bfloat16'):
      for policy in REMAT:
        row = child('memory', policy, dtype)
        baseline.setdefault(dtype, row['temp'])
        print(f'{policy:>34} {dtype:>9} {row["temp"] / 2**30:>9.2f} '
              f'{baseline[dtype] / row["temp"]:>7.2f}x {row["arguments"] / 2**30:>14.2f}',
              flush=True)
    print(f'(parameters: {row["params"] / 1e6:.1f}M)')
  if not args.skip_decode:
    print('\nDecoderLM d_model 256, cached greedy decoding of 4 x (8 + 32) tokens: seconds '
          'to compile')
    print(f'{"layers":>6} {"unrolled":>9} {"scanned":>8} {"ratio":>6}')
    for layers in args.decode_depths:
      unrolled, scanned = child('decode', layers, False), child('decode', layers, True)
      print(f'{layers:>6} {unrolled["decode_s"]:>9.1f} {scanned["decode_s"]:>8.1f} '
            f'{scanned["decode_s"] / unrolled["decode_s"]:>6.2f}', flush=True)


if __name__ == '__main__':
  main()
