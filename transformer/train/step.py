"""Pure train and eval steps (`transformer.train.strategy` compiles them with jit or pmap).

One step function serves both: with `axis_name=None` it sees the global batch (jit over a
mesh: XLA inserts the collectives); under pmap it sees one device's slice and sums the
loss, the token count and the gradients across `axis_name` itself. The loss is always
(sum of token losses) / (total token weight of the global batch), so every strategy and
every gradient-accumulation setting computes the same number.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

from transformer.tasks import Task
from transformer import losses as loss_lib

Batch = Mapping[str, jax.Array]


class TrainState(train_state.TrainState):
  """step, params, opt_state (and the static apply_fn and tx), as a pytree."""


def state_initializer(model: nn.Module, task: Task, tx: optax.GradientTransformation
                      ) -> Callable[[jax.Array], TrainState]:
  """rng -> TrainState with logically-annotated ("boxed") parameters and moments."""
  def init(rng):
    variables = model.init(rng, *task.example_inputs())
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx)
    # A strongly typed step (flax starts from a Python 0): a fresh state and a restored one
    # then share one compiled train step.
    return state.replace(step=jnp.zeros((), jnp.int32))
  return init


def _sum_over(axis_name: str | None, tree):
  if axis_name is None:
    return tree
  if jax.default_backend() != 'cpu':  # XLA combines the arrays into one all-reduce itself
    return jax.lax.psum(tree, axis_name)
  # XLA's CPU all-reduce pays per array (4.6 ms for this repo's 36 Tiny Shakespeare
  # gradients, 0.4 ms for the same numbers in one buffer): reduce one flat buffer.
  flat, unflatten = jax.flatten_util.ravel_pytree(tree)
  return unflatten(jax.lax.psum(flat, axis_name))


def summarise(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  weight = jnp.maximum(sums['weight_sum'], 1e-9)
  out = {'loss': sums['loss_sum'] / weight, 'nll': sums['nll_sum'] / weight,
         'accuracy': sums['correct_sum'] / weight, 'tokens': sums['weight_sum']}
  if 'exact_sum' in sums:
    out['exact_match'] = sums['exact_sum'] / jnp.maximum(sums['sequence_sum'], 1e-9)
    out['sequences'] = sums['sequence_sum']
  return out


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, task: Task,
               dropout_key: jax.Array, label_smoothing: float = 0.0,
               grad_accum_steps: int = 1, learning_rate_fn: Callable | None = None,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`, split into `grad_accum_steps` micro-batches."""
  key = jax.random.fold_in(dropout_key, state.step)
  if axis_name is not None:  # each device drops different units
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

  # Gradients of the summed token losses, divided by the global token weight once the
  # devices have added them up: the weights travel in the same all-reduce as the gradients.
  def loss_fn(params, micro, micro_key):
    logits, targets, w = task.forward(model, params, micro, deterministic=False,
                                      rngs={'dropout': micro_key})
    sums = loss_lib.cross_entropy_sums(logits, targets, w, label_smoothing)
    return sums['loss_sum'], sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, sums), grads = grad_fn(state.params, batch, key)
  else:
    micro_batches = _split_micro_batches(batch, grad_accum_steps)

    def accumulate(carry, xs):
      grads_acc, sums_acc = carry
      index, micro = xs
      (_, sums), grads = grad_fn(state.params, micro, jax.random.fold_in(key, index))
      return (jax.tree.map(jnp.add, grads_acc, grads),
              jax.tree.map(jnp.add, sums_acc, sums)), None

    zeros_grads = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32)
                 for k in ('loss_sum', 'nll_sum', 'correct_sum', 'weight_sum')}
    (grads, sums), _ = jax.lax.scan(
        accumulate, (zeros_grads, zero_sums),
        (jnp.arange(grad_accum_steps), micro_batches))
  sums = {**sums, 'processed_tokens': task.processed_tokens(batch, sums)}
  grads, sums = _sum_over(axis_name, (grads, sums))
  weight_total = jnp.maximum(sums['weight_sum'], 1e-9)
  grads = jax.tree.map(lambda g: g / weight_total.astype(g.dtype), grads)
  grad_norm = optax.global_norm(grads)
  # A non-finite loss or gradient never reaches the parameters: that update is skipped
  # (the step counter still advances, as the data does) and `finite` tells the loop, which
  # stops the run or counts the skip (train.skip_nonfinite).
  finite = jnp.isfinite(sums['loss_sum']) & jnp.isfinite(grad_norm)
  # An elementwise select rather than lax.cond: XLA fuses it into the update's kernels,
  # where a cond costs a copy of the state on CPU (10-15% of a small model's step).
  updated = state.apply_gradients(grads=grads)
  keep = lambda new, old: jnp.where(finite, new, old)
  new_state = updated.replace(params=jax.tree.map(keep, updated.params, state.params),
                              opt_state=jax.tree.map(keep, updated.opt_state, state.opt_state))
  metrics = summarise(sums)
  metrics['tokens'] = sums['processed_tokens']
  metrics['grad_norm'] = grad_norm
  metrics['finite'] = finite.astype(jnp.float32)
  if learning_rate_fn is not None:
    metrics['learning_rate'] = learning_rate_fn(state.step)
  return new_state, metrics


def _split_micro_batches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B / n, ...], micro-batch a taking rows a, n + a, 2n + a, ...

  Strided rather than contiguous so that each device's contiguous block of rows stays on
  that device (no resharding when the batch is split over devices).
  """
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'batch of {x.shape[0]} rows does not split into {n} micro-batches')
    return x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, dict(batch))


def eval_step(params: Any, batch: Batch, *, model: nn.Module, task: Task,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Sums (not means) of the eval metrics on one padded batch; `summarise` them at the end."""
  logits, targets, weights = task.forward(model, params, batch, deterministic=True)
  sums = loss_lib.cross_entropy_sums(logits, targets, weights)
  sums.update(task.eval_sums(logits, targets, weights))
  return _sum_over(axis_name, sums)


def scan_steps(train_fn: Callable) -> Callable:
  """`train_fn` over batches stacked on a leading [steps] axis, in one compiled loop.

  The same updates as calling `train_fn` once per batch, but the host dispatches (and the
  devices synchronise with it) once per call: on CPUs, where a small model's step lasts
  milliseconds, that overhead is a sizeable part of the step. Metrics come back stacked.
  """
  def steps(state, batches):
    return jax.lax.scan(train_fn, state, batches)
  return steps
