"""The NNX face's cost: one Adam step of the same DecoderLM through linen and through NNX.

Three jitted steps on the same parameters and batch, timed in alternating rounds:
  - linen: `jax.jit` of (params, opt_state, batch) -> (params, opt_state, loss), donated;
  - nnx.jit: `transformer.nnx.to_nnx(model, variables)` and `nnx.Optimizer`, the step
    written the NNX way (`nnx.jit`, `nnx.value_and_grad`, `optimizer.update`), which
    walks the module graph in Python on every call;
  - nnx split/merge: the same NNX step inside `jax.jit` on `nnx.split`'s state (the graph
    walked once, outside the loop), the form Flax recommends where call overhead matters.

    python benchmarks/nnx_step.py [--steps 30] [--rounds 3] [--d_model 256]
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import nnx

import transformer as tfm
from transformer import nnx as tnnx


def cross_entropy(logits, tokens):
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--d_model', type=int, default=256)
  parser.add_argument('--layers', type=int, default=4)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--length', type=int, default=128)
  args = parser.parse_args()

  cfg = tfm.tiny(vocab_size=512, d_model=args.d_model, num_heads=4, mlp_dim=4 * args.d_model,
                 num_layers=args.layers, max_len=args.length)
  model = tfm.DecoderLM(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.length), 0, 512)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens))['params']
  tx = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def linen_step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(
        lambda p: cross_entropy(model.apply({'params': p}, tokens), tokens))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def nnx_loss_and_update(module, optimizer, tokens):
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(tokens), tokens))(module)
    optimizer.update(module, grads)
    return loss

  module = tnnx.to_nnx(model, {'params': jax.tree.map(jnp.copy, params)})
  optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)
  nnx_step = nnx.jit(nnx_loss_and_update)

  split_module = tnnx.to_nnx(model, {'params': jax.tree.map(jnp.copy, params)})
  graphdef, state = nnx.split((split_module, nnx.Optimizer(split_module, tx, wrt=nnx.Param)))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def split_step(state, tokens):
    module, optimizer = nnx.merge(graphdef, state)
    loss = nnx_loss_and_update(module, optimizer, tokens)
    return nnx.state((module, optimizer)), loss

  linen_state = [params, tx.init(params)]
  split_state = [state]

  def run_linen():
    linen_state[0], linen_state[1], loss = linen_step(*linen_state, tokens)
    return loss

  def run_nnx():
    return nnx_step(module, optimizer, tokens)

  def run_split():
    split_state[0], loss = split_step(split_state[0], tokens)
    return loss

  runners = {'linen (jax.jit)': run_linen, 'nnx.jit': run_nnx, 'nnx split/merge': run_split}
  losses = {name: [float(run()) for _ in range(3)] for name, run in runners.items()}  # compile
  times = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      run().block_until_ready()
      start = time.perf_counter()
      for _ in range(args.steps):
        loss = run()
      loss.block_until_ready()
      times[name].append((time.perf_counter() - start) / args.steps)
  base = statistics.median(times['linen (jax.jit)'])
  params_count = sum(x.size for x in jax.tree.leaves(params))
  print(f'DecoderLM d_model {args.d_model}, {args.layers} layers, {params_count / 1e6:.1f}M '
        f'parameters, batch {args.batch} x {args.length}, {args.rounds} rounds of '
        f'{args.steps} steps, {jax.devices()[0].platform}')
  print('| step | ms/step (median) | vs linen | first losses |')
  print('| --- | --- | --- | --- |')
  for name in runners:
    median = statistics.median(times[name])
    print(f'| {name} | {1e3 * median:.2f} | {median / base:.3f}x | '
          f'{", ".join(f"{v:.4f}" for v in losses[name])} |')


if __name__ == '__main__':
  main()
