"""Evaluation of parameters on a split: loss, accuracy, perplexity, the task's extras
(exact match; BLEU by decoding) and a few printed examples.

    evaluator = Evaluator(experiment.task, experiment.model, experiment.datasets, strategy,
                          config.train, DecodeSettings(**config.decode))
    metrics = evaluator.evaluate(params, 'valid')   # {'eval/loss': ..., 'eval/bleu': ...}

The trainer calls it every `train.eval_every` steps; `python -m transformer evaluate`
calls it on a checkpoint without a trainer.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from transformer.data.datasets import Datasets
from transformer.tasks import DecodeSettings, Task
from transformer.train import metrics as metrics_lib
from transformer.train import step as step_lib


def split_prefix(split: str) -> str:
  """Metric names: 'eval/...' for the validation split, '<split>/...' for the others."""
  return 'eval' if split in ('valid', 'validation') else split


class Evaluator:
  """Scores parameters with the strategy's compiled eval step and the task's decoders."""

  def __init__(self, task: Task, model: Any, datasets: Datasets, strategy: Any,
               train_config: ml_collections.ConfigDict, decode: DecodeSettings):
    self.task, self.model, self.datasets, self.strategy = task, model, datasets, strategy
    self.max_batches = train_config.eval_batches
    self.decode_on_eval = train_config.eval_bleu
    self.decode_limit = train_config.bleu_examples
    self.decode = decode

  def evaluate(self, params: Any, split: str = 'valid', *, decode: bool | None = None
               ) -> dict[str, float]:
    """Metrics of `params` (in the strategy's layout) on `split`, named '<prefix>/<metric>'.

    `decode` (default: `train.eval_bleu`) adds the task's decoding metrics (BLEU).
    """
    totals: dict[str, float] = {}
    for i, batch in enumerate(self.datasets.eval_batches(split)):
      if self.max_batches and i >= self.max_batches:
        break
      # Fetched batch by batch: queueing many multi-device steps at once can stall XLA's
      # CPU collectives (an all-reduce rendezvous timed out with 145 queued batches).
      sums = metrics_lib.to_float(self.strategy.one_copy(
          self.strategy.eval(params, self.strategy.put_batch(batch))))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + v
    if not totals:
      return {}
    summary = metrics_lib.to_float(step_lib.summarise(totals))
    out = {'loss': summary['nll'], 'accuracy': summary['accuracy'],
           'perplexity': float(np.exp(min(summary['nll'], 50.0)))}
    if 'exact_match' in summary:
      out['exact_match'] = summary['exact_match']
    if self.decode_on_eval if decode is None else decode:
      params = self.host_params(params)   # the decoders run on this process's own devices
      out.update(self.task.decode_metrics(self.model, params, self.datasets, split,
                                          self.decode, limit=self.decode_limit))
    return {f'{split_prefix(split)}/{k}': v for k, v in out.items()}

  def host_params(self, params: Any) -> Any:
    """One copy of the parameters, usable on every process's own devices (a collective
    with several processes: call it on all of them)."""
    params = self.strategy.one_copy(params)
    if jax.process_count() > 1:
      return multihost_utils.process_allgather(params, tiled=True)
    return params

  def sample_outputs(self, params: Any, count: int) -> list[str]:
    """The task's printable sample outputs (on process 0; [] elsewhere)."""
    if not count:
      return []
    params = self.host_params(params)
    if jax.process_index() != 0:
      return []
    return self.task.sample_outputs(self.model, params, self.datasets, count)
