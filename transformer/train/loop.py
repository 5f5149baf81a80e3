"""The training loop: it executes what `transformer.experiment.build` made.

    experiment = build(config, workdir)
    metrics = Trainer(experiment).run()

The loop owns the run's I/O: the train steps, checkpoints, metric writing, evaluation
calls and signals. The steps (step.py) stay pure; the strategy (strategy.py) decides how
they run on the devices; evaluation.py scores parameters. Metrics of step s are fetched
after step s + 1 has been dispatched, so logging never stalls the device.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pathlib
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from transformer import experiment as experiment_lib
from transformer.tasks import DecodeSettings
from transformer.train import checkpoint as checkpoint_lib
from transformer.train import metrics as metrics_lib
from transformer.train import process
from transformer.train.evaluation import Evaluator
from transformer.train.strategy import make_strategy


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Trainer:
  """Runs an `Experiment`: `run()` trains (or resumes) and evaluates."""

  def __init__(self, experiment: experiment_lib.Experiment,
               workdir: str | pathlib.Path | None = None):
    if experiment.datasets is None:
      raise ValueError('the experiment has no data: build it with a workdir')
    self.experiment = experiment
    self.config = config = experiment.config
    self.workdir = pathlib.Path(workdir or experiment.workdir)
    self.is_main = jax.process_index() == 0
    self.steps_per_call = config.train.steps_per_call
    if self.steps_per_call < 1:
      raise ValueError(f'train.steps_per_call must be >= 1, not {self.steps_per_call}')
    self.strategy = make_strategy(config.parallelism, experiment.mesh,
                                  experiment.state_sharding, experiment.train_fn,
                                  experiment.eval_fn, self.steps_per_call)
    self.evaluator = Evaluator(experiment.task, experiment.model, experiment.datasets,
                               self.strategy, config.train, DecodeSettings(**config.decode))
    self.checkpointer = checkpoint_lib.Checkpointer(
        self.workdir / 'checkpoints', max_to_keep=config.train.max_to_keep,
        best_metric=config.train.best_metric or None, best_mode=config.train.best_mode)
    self.final_state = None

  # --- state and inputs ---------------------------------------------------------------------

  def _next_train_input(self, iterator, steps: int):
    """The next `steps` batches as one input of the train step (stacked when
    steps_per_call > 1)."""
    if self.steps_per_call == 1:
      return self.strategy.put_batch(next(iterator))
    batches = [next(iterator) for _ in range(steps)]
    return self.strategy.put_batch({k: np.stack([b[k] for b in batches]) for k in batches[0]},
                                   stacked=True)

  def _per_step_metrics(self, metrics, steps: int) -> list[dict[str, float]]:
    """The train step's metrics as one dict of floats per step (one transfer)."""
    if self.steps_per_call == 1:
      return [metrics_lib.to_float(self.strategy.one_copy(metrics))]
    stacked = jax.device_get(self.strategy.one_copy(metrics))
    return [{k: float(v[i]) for k, v in stacked.items()} for i in range(steps)]

  def compile_ahead(self) -> concurrent.futures.Future:
    """Compiles the train and eval steps in a background thread.

    XLA compiles while the main thread initialises (or restores) the state and opens the
    metric writers, which on a small model saves seconds of start-up. The later calls find
    the executables in jit's (or pmap's) cache: the inputs here are shaped and placed like
    the real ones.
    """
    like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    datasets = self.experiment.datasets
    # Shapes only: a throwaway iterator.
    train_input = jax.tree.map(
        like, self._next_train_input(datasets.train_iter(), self.steps_per_call))
    eval_input = None
    if 'valid' in datasets.splits:
      eval_input = jax.tree.map(
          like, self.strategy.put_batch(next(iter(datasets.eval_batches('valid')))))
    state = self.strategy.abstract_state(self.experiment.abstract_state)

    def compile_steps():
      self.strategy.train.lower(state, train_input).compile()
      if eval_input is not None:
        self.strategy.eval.lower(state.params, eval_input).compile()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='compile')
    future = pool.submit(compile_steps)
    pool.shutdown(wait=False)
    return future

  def restore_or_init(self):
    """(state in the strategy's layout, data iterator), from the newest checkpoint when
    there is one."""
    iterator = self.experiment.datasets.train_iter()
    step = self.checkpointer.latest_step()
    if step is None:
      state = self.experiment.init_state(self.experiment.rng)
    else:
      state, data_state, _ = self.checkpointer.restore(step, self.experiment.abstract_state)
      if data_state:
        iterator.set_state(data_state)
      logging.info('restored step %d from %s', step, self.workdir / 'checkpoints')
    return self.strategy.put_state(state), iterator

  def save(self, state, iterator, metrics=None) -> None:
    host_state = self.strategy.one_copy(state)
    step = int(jax.device_get(host_state.step))
    self.checkpointer.save(step, host_state, iterator.get_state(), self.config.to_dict(),
                           metrics=metrics)

  # --- the loop -----------------------------------------------------------------------------

  def run(self) -> dict[str, float]:
    cfg = self.config.train
    if self.is_main:
      (self.workdir / 'config.json').write_text(self.config.to_json_best_effort(indent=2))
    compiling = self.compile_ahead()
    writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main)
    state, iterator = self.restore_or_init()
    start = int(self.strategy.one_copy(state.step))
    num_steps = cfg.num_steps
    task, model_config = self.experiment.task, self.experiment.model_config
    flops_per_token = task.flops_per_token(model_config,
                                           task.sequence_lengths(self.config.data))
    # While the steps compile: the end-of-run examples, from the initial parameters, so that
    # their decoding loop is compiled by the end.
    self.evaluator.examples(state.params, cfg.num_examples_to_show)
    compiling.result()   # before the peak is measured: nothing else may run then
    peak, peak_source = metrics_lib.device_peak_flops()
    throughput = metrics_lib.Throughput(flops_per_token, peak * jax.device_count())
    logging.info('model FLOPs/token %.3g; peak %.3g FLOP/s per device (%s)',
                 flops_per_token, peak, peak_source)

    eval_metrics: dict[str, float] = {}
    pending = None          # (first step, device metrics, steps) of the previous call
    window: dict[str, float] = {}
    window_steps = 0
    window_tokens = 0.0

    def account(first_step, values):
      nonlocal window, window_steps, window_tokens
      for done_step, step_values in enumerate(values, first_step):
        for k, v in step_values.items():
          window[k] = window.get(k, 0.0) + v
        window_steps += 1
        window_tokens += step_values['tokens']
        if done_step % cfg.log_every == 0 or done_step == 1 or done_step == num_steps:
          self._log_train(writer, done_step, window, window_steps, window_tokens, throughput,
                          bar)
          window, window_steps, window_tokens = {}, 0, 0.0

    bar = tqdm(total=num_steps, initial=start, disable=not self.is_main, desc='train',
               dynamic_ncols=True, mininterval=1.0)
    preempted = False
    step = start
    with _Preemption() as preemption:
      while step < num_steps:
        if preemption.requested:
          preempted = True
          break
        # A call never crosses an evaluation or checkpoint step, nor the end.
        steps = min(self.steps_per_call, num_steps - step,
                    cfg.eval_every - step % cfg.eval_every,
                    cfg.checkpoint_every - step % cfg.checkpoint_every)
        state, device_metrics = self.strategy.train(state,
                                                    self._next_train_input(iterator, steps))
        if pending is not None:  # the previous call's metrics, while this one runs
          account(pending[0], self._per_step_metrics(*pending[1:]))
        pending = (step + 1, device_metrics, steps)
        step += steps
        bar.update(steps)

        last = step == num_steps
        if step % cfg.eval_every == 0 or last:
          eval_start = time.perf_counter()
          eval_metrics = self.evaluator.evaluate(state.params)
          writer.write(step, eval_metrics)
          bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.4g}'
                                                  for k, v in eval_metrics.items()))
          throughput.exclude(time.perf_counter() - eval_start)
        if step % cfg.checkpoint_every == 0 or last:
          self.save(state, iterator, eval_metrics if step % cfg.eval_every == 0 or last
                    else None)
    if pending is not None and not preempted:
      account(pending[0], self._per_step_metrics(*pending[1:]))
    bar.close()
    if preempted or num_steps > start:
      host_step = int(self.strategy.one_copy(state.step))
      if host_step not in self.checkpointer.all_steps():
        self.save(state, iterator)
    self.checkpointer.wait()
    writer.flush()
    writer.close()
    if preempted:
      logging.warning('SIGTERM: saved step %d and stopped', host_step)
      print(f'preempted: checkpoint saved at step {host_step}', flush=True)
    self.final_state = self.strategy.one_copy(state)
    if not preempted:
      for line in self.evaluator.examples(state.params, cfg.num_examples_to_show):
        print(line, flush=True)
    return eval_metrics

  def _log_train(self, writer, step, window, steps, tokens, throughput, bar) -> None:
    means = {f'train/{k}': v / steps for k, v in window.items()
             if k not in ('tokens', 'sequences')}
    rates = throughput.update(tokens)
    scalars = {**means, **rates}
    writer.write(step, scalars)
    postfix = {'loss': f"{means.get('train/loss', float('nan')):.4f}"}
    if 'train/tokens_per_sec' in rates:
      postfix['tok/s'] = f"{rates['train/tokens_per_sec']:.0f}"
    bar.set_postfix(postfix, refresh=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Sets up the process, builds the experiment, trains (or resumes) the run in `workdir`;
  returns the final evaluation metrics."""
  process.setup(config)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  return Trainer(experiment_lib.build(config, workdir)).run()
