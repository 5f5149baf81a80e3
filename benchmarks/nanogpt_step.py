"""Our train step against a PyTorch GPT of nanoGPT's shape, in one run on this machine.

configs/shakespeare_char.py copies nanoGPT's CPU settings (4 layers, 4 heads, width 128,
context 64, batch 12, AdamW, no bias, no dropout). This times one optimizer step of
  - ours: the jitted, donated `train_step` on 1 XLA device and on the CPU split into 2,
    and as train.py runs it (2 devices, 10 steps per compiled call);
  - PyTorch eager: a GPT of the same shape (pre-LN blocks, fused QKV projection, GELU MLP,
    learned positions, tied embeddings) with torch.optim.AdamW, written here for timing
    (nanoGPT's own code is not vendored).
Both see the same random character windows. Needs `pip install torch` (not a dependency
of the package).

    python benchmarks/nanogpt_step.py [--steps 100]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

B, T, VOCAB, D, LAYERS, HEADS = 12, 64, 65, 128, 4, 4


def batches(steps: int):
  rng = np.random.default_rng(0)
  data = rng.integers(0, VOCAB, 100_000).astype(np.int64)
  for _ in range(steps):
    starts = rng.integers(0, len(data) - T - 1, B)
    x = np.stack([data[s:s + T] for s in starts])
    y = np.stack([data[s + 1:s + T + 1] for s in starts])
    yield x, y


def time_jax(steps: int, steps_per_call: int = 1) -> float:
  import jax

  from transformer import sharding
  from train_throughput import compiled_train_step, load_config  # benchmarks/ is sys.path[0]

  exp, state, train = compiled_train_step(load_config('shakespeare_char'), VOCAB,
                                          steps_per_call)
  mesh = exp.mesh
  weights = np.ones((B, T), np.float32)
  host = [{'inputs': x.astype(np.int32), 'targets': y.astype(np.int32), 'weights': weights}
          for x, y in batches(steps + steps_per_call)]
  stacked = steps_per_call > 1
  if stacked:
    host = [{k: np.stack([b[k] for b in host[i:i + steps_per_call]]) for k in host[0]}
            for i in range(0, len(host), steps_per_call)]
  data = [sharding.global_batch(b, mesh, stacked) for b in host]
  state, metrics = train(state, data[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in data[1:]:
    state, metrics = train(state, batch)
    jax.device_get(metrics['loss'])  # the loop reads the losses, as a training script does
  return (time.perf_counter() - start) / (len(data) - 1) / steps_per_call


def torch_gpt():
  """(model, AdamW) of nanoGPT's shape in PyTorch: pre-LN blocks, fused QKV, GELU MLP,
  learned positions, tied embeddings, no bias; nanoGPT's initialisation (normal 0.02, the
  residual projections scaled by 1/sqrt(2 * layers)) and its AdamW (decay on matrices)."""
  import math

  import torch
  from torch import nn
  from torch.nn import functional as F

  torch.manual_seed(0)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln1, self.ln2 = nn.LayerNorm(D, bias=False), nn.LayerNorm(D, bias=False)
      self.qkv, self.proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
      self.up, self.down = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)

    def forward(self, x):
      b, t, _ = x.shape
      q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
      heads = lambda z: z.view(b, t, HEADS, D // HEADS).transpose(1, 2)
      y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
      x = x + self.proj(y.transpose(1, 2).reshape(b, t, D))
      return x + self.down(F.gelu(self.up(self.ln2(x))))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(T, D)
      self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
      self.ln = nn.LayerNorm(D, bias=False)
      for name, p in self.named_parameters():
        if p.dim() >= 2:
          std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(('proj.weight', 'down.weight')) \
              else 0.02
          nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
      x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
      for block in self.blocks:
        x = block(x)
      logits = self.ln(x) @ self.tok.weight.T
      return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))

  model = GPT()
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=1e-3,
                          betas=(0.9, 0.99))
  return model, opt


def torch_step(model, opt, x, y) -> float:
  """One nanoGPT iteration: forward, backward, clip to 1.0, AdamW; returns the loss."""
  import torch
  loss = model(x, y)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
  opt.step()
  return loss.item()


def time_torch(steps: int) -> float:
  import torch

  model, opt = torch_gpt()
  data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches(steps + 1)]
  torch_step(model, opt, *data[0])
  start = time.perf_counter()
  for x, y in data[1:]:
    torch_step(model, opt, x, y)
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--child', choices=['jax', 'torch'], default=None, help=argparse.SUPPRESS)
  parser.add_argument('--steps_per_call', type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    seconds = (time_jax(args.steps, args.steps_per_call) if args.child == 'jax'
               else time_torch(args.steps))
    print(json.dumps({'ms': 1e3 * seconds}))
    return
  rows = []
  for label, child, devices, per_call in [
      ('ours, 1 XLA device', 'jax', 1, 1),
      ('ours, 2 XLA devices', 'jax', 2, 1),
      ('ours, 2 devices, 10 steps per call (config)', 'jax', 2, 10),
      ('PyTorch eager (nanoGPT shape)', 'torch', 1, 1)]:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
    out = subprocess.run([sys.executable, __file__, '--child', child, '--steps',
                          str(args.steps), '--steps_per_call', str(per_call)],
                         env=env, capture_output=True, text=True, check=True)
    rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])['ms']))
  torch_ms = rows[-1][1]
  print(f'{"train step, batch 12 x 64, 4 layers x 128":<46} {"ms/step":>8} {"vs PyTorch":>10}')
  for label, ms in rows:
    print(f'{label:<46} {ms:>8.1f} {torch_ms / ms:>9.2f}x')


if __name__ == '__main__':
  main()
