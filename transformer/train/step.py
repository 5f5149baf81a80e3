"""Pure train and eval steps, and their `jax.jit` (sharded) and `jax.pmap` wrappers.

One step function serves both: with `axis_name=None` it sees the global batch (jit over a
mesh: XLA inserts the collectives); under pmap it sees one device's slice and sums the
loss, the token count and the gradients across `axis_name` itself. The loss is always
(sum of token losses) / (total token weight of the global batch), so every strategy and
every gradient-accumulation setting computes the same number.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer.train import loss as loss_lib

Batch = Mapping[str, jax.Array]
TASKS = ('translation', 'lm', 'mlm', 'classification')


class TrainState(train_state.TrainState):
  """step, params, opt_state (and the static apply_fn and tx), as a pytree."""


def forward(model: nn.Module, params: Any, batch: Batch, task: str, *, deterministic: bool,
            rngs: dict[str, jax.Array] | None = None):
  """Runs the model on a batch; returns (logits, targets, weights) for the loss.

  Batch keys (see transformer/data): inputs, targets, weights, and for packed rows
  inputs_segmentation / inputs_position (and targets_* for translation); translation adds
  decoder_inputs; classification has label [B] instead of targets.
  """
  variables = {'params': params}
  kwargs = dict(deterministic=deterministic, rngs=rngs)
  if task == 'translation':
    logits = model.apply(
        variables, batch['inputs'], batch['decoder_inputs'],
        inputs_positions=batch.get('inputs_position'),
        inputs_segment_ids=batch.get('inputs_segmentation'),
        decoder_positions=batch.get('targets_position'),
        decoder_segment_ids=batch.get('targets_segmentation'), **kwargs)
    return logits, batch['targets'], batch['weights']
  if task in ('lm', 'mlm'):
    method = None if task == 'lm' else 'mlm_logits'
    logits = model.apply(variables, batch['inputs'], positions=batch.get('inputs_position'),
                         segment_ids=batch.get('inputs_segmentation'), method=method, **kwargs)
    return logits, batch['targets'], batch['weights']
  if task == 'classification':
    logits = model.apply(variables, batch['inputs'], method='classify', **kwargs)
    weights = batch.get('weights')
    if weights is None:  # padded eval rows are all-pad
      weights = jnp.any(batch['inputs'] != 0, axis=-1).astype(jnp.float32)
    return logits, batch['label'], weights
  raise ValueError(f'unknown task {task!r}; use one of {TASKS}')


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


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, task: str,
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
    logits, targets, w = forward(model, params, micro, task, deterministic=False,
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
  grads, sums = _sum_over(axis_name, (grads, sums))
  weight_total = jnp.maximum(sums['weight_sum'], 1e-9)
  grads = jax.tree.map(lambda g: g / weight_total.astype(g.dtype), grads)
  new_state = state.apply_gradients(grads=grads)
  metrics = summarise(sums)
  if task == 'mlm':  # the model processes every real token, not only the masked ones
    metrics['tokens'] = _sum_over(axis_name, jnp.sum(batch['inputs'] != 0).astype(jnp.float32))
  metrics['grad_norm'] = optax.global_norm(grads)
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


def eval_step(params: Any, batch: Batch, *, model: nn.Module, task: str,
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Sums (not means) of the eval metrics on one padded batch; `summarise` them at the end."""
  logits, targets, weights = forward(model, params, batch, task, deterministic=True)
  sums = loss_lib.cross_entropy_sums(logits, targets, weights)
  if task == 'translation':
    sums.update(loss_lib.sequence_exact_matches(logits, targets, weights))
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


def jit_steps(train_fn: Callable, eval_fn: Callable, state_sharding: Any, params_sharding: Any,
              batch_sharding: Any, replicated: Any, steps_per_call: int = 1):
  """jit with explicit shardings; the state's buffers are donated to the update.

  `steps_per_call > 1`: the train step takes batches stacked on a new leading axis (see
  `scan_steps`), that axis unsharded.
  """
  train_batch_sharding = batch_sharding
  if steps_per_call > 1:
    train_fn = scan_steps(train_fn)
    train_batch_sharding = NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))
  p_train = jax.jit(train_fn, in_shardings=(state_sharding, train_batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=0)
  p_eval = jax.jit(eval_fn, in_shardings=(params_sharding, batch_sharding),
                   out_shardings=replicated)
  return p_train, p_eval


def pmap_steps(train_fn: Callable, eval_fn: Callable, axis_name: str, steps_per_call: int = 1):
  """The same steps under pmap: plain data parallelism, gradients summed by `lax.psum`."""
  train_fn = functools.partial(train_fn, axis_name=axis_name)
  if steps_per_call > 1:
    train_fn = scan_steps(train_fn)
  p_train = jax.pmap(train_fn, axis_name=axis_name, donate_argnums=0)
  p_eval = jax.pmap(functools.partial(eval_fn, axis_name=axis_name), axis_name=axis_name)
  return p_train, p_eval
