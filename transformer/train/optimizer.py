"""Learning-rate schedules and the optimizer, built from the config's `optim` section."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from transformer.errors import ConfigError


def paper_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
  """lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)  (paper, eq. 3).

  Optax counts updates from 0; the paper's step 1 is the first update.
  """
  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return scale * d_model ** -0.5 * jnp.minimum(step ** -0.5, step * warmup_steps ** -1.5)
  return schedule


def make_schedule(optim, d_model: int, total_steps: int) -> optax.Schedule:
  """`optim.schedule`: 'paper', 'warmup_cosine', 'warmup_linear' or 'constant'."""
  name = optim.schedule
  if name == 'paper':
    return paper_schedule(d_model, optim.warmup_steps, optim.lr_scale)
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
        decay_steps=max(optim.decay_steps or total_steps, optim.warmup_steps + 1),
        end_value=optim.end_learning_rate)
  if name == 'warmup_linear':
    return optax.join_schedules([
        optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps),
        optax.linear_schedule(optim.learning_rate, optim.end_learning_rate,
                              max(total_steps - optim.warmup_steps, 1)),
    ], [optim.warmup_steps])
  if name == 'constant':
    return optax.constant_schedule(optim.learning_rate)
  raise ConfigError(f"unknown schedule {name!r} (optim.schedule): use 'paper', 'warmup_cosine', "
                   "'warmup_linear' or 'constant'")


def decay_mask(params):
  """True for the weights that weight decay applies to: projection kernels and embedding
  tables, not biases and norm scales (GPT-2, nanoGPT). By name, not by rank: attention
  biases are [heads, head_dim] and scanned layers add a leading axis to every parameter."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) in ('kernel', 'embedding'), params)


def make_optimizer(optim, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Adam(W) with the config's betas and eps (paper: 0.9, 0.98, 1e-9), after clipping."""
  if optim.weight_decay:
    adam = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay, mask=decay_mask)
  else:
    adam = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  if optim.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adam)
  return adam
