"""The training loop: it executes what `transformer.train.experiment.build` made.

    metrics = train_and_evaluate(config, workdir)      # what train.py runs, or by hand:
    experiment = build(config, workdir)
    metrics = Trainer(experiment).run()

The loop owns the run's I/O: the train steps, checkpoints, metric writing, evaluation
calls and signals. The steps (step.py) stay pure; the strategy (strategy.py) decides how
they run on the devices; evaluation.py scores parameters. Metrics of step s are fetched
after step s + 1 has been dispatched, so logging never stalls the device; they are drained
before every checkpoint, so no checkpoint follows a step whose loss was not finite.
"""

from __future__ import annotations

import contextlib
import concurrent.futures
import json
import logging
import math
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from transformer import storage
from transformer.errors import HostLost, RunStopped, UserError, typed_line
from transformer.tasks import DecodeSettings
from transformer.train import experiment as experiment_lib
from transformer.train import checkpoint as checkpoint_lib
from transformer.train import metrics as metrics_lib
from transformer.train import peers
from transformer.train import process
from transformer.train import wandb_log
from transformer.train import strategy as strategy_lib
from transformer.train.evaluation import Evaluator
from transformer.train.profile import StepProfiler
from transformer.train.strategy import make_strategy
from transformer.train.workdir import WorkdirLock, check_resume


class _Preemption:
  """SIGTERM (or the TPU maintenance notice JAX sees) as a decision the loop checks before
  each call: `stop()` answers the same on every process at the same call.

  One process: a Python handler sets a flag. Several: JAX's preemption service (started by
  `jax.distributed.initialize`) catches the signal on whichever host gets it, and
  `reached_preemption_sync_point` agrees on the first call every process can still reach,
  so all of them save the same step; a flag of our own would stop only the signalled
  process and leave the others waiting in the next collective forever.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._calls = 0
    self.synced = (jax.process_count() > 1 and jax.distributed.is_initialized()
                   and jax.config.jax_enable_preemption_service)

  def __enter__(self):
    if self.synced:
      return self    # the preemption service's own handler must keep the signal
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def stop(self) -> bool:
    """Whether to stop before the next call (call it once per call, on every process)."""
    if self.synced:
      # Counted in calls, not steps: the service's sync point is the highest count any
      # process reported plus one, which every process reaches.
      self._calls += 1
      self.requested = multihost_utils.reached_preemption_sync_point(self._calls)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _NonFinite(Exception):
  """A train step whose loss or gradient was not finite, beyond train.skip_nonfinite."""

  def __init__(self, step: int, values: dict[str, float]):
    super().__init__(step)
    self.step, self.values = step, values


class _TrainLog:
  """The train steps' metrics, fetched one call late, averaged over logging windows.

  Each window record names the steps it averages (`train/first_step` .. `step`); steps
  whose loss or gradient was not finite are counted (`train/skipped_steps`), never
  averaged, and beyond `skip_limit` of them the run stops (`_NonFinite`).
  """

  def __init__(self, writer, throughput, bar, *, log_every: int, num_steps: int,
               skip_limit: int, start: int):
    self.writer, self.throughput, self.bar = writer, throughput, bar
    self.log_every, self.num_steps, self.skip_limit = log_every, num_steps, skip_limit
    self.skipped = 0
    self._reset(start + 1)

  def _reset(self, first_step: int) -> None:
    self.sums: dict[str, float] = {}
    self.steps, self.tokens, self.window_skips, self.first = 0, 0.0, 0, first_step

  def add(self, first_step: int, per_step: list[dict[str, float]]) -> None:
    for step, values in enumerate(per_step, first_step):
      if not values.pop('finite', 1.0):
        self._skip(step, values)
      else:
        for k, v in values.items():
          self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        self.tokens += values['tokens']
      if step % self.log_every == 0 or step == 1 or step == self.num_steps:
        self.write(step)

  def _skip(self, step: int, values: dict[str, float]) -> None:
    self.skipped += 1
    self.window_skips += 1
    if self.skipped > self.skip_limit:
      raise _NonFinite(step, values)
    message = (f"step {step}: loss {values['loss']:.4g}, gradient norm "
               f"{values['grad_norm']:.4g}: update skipped ({self.skipped} of "
               f'train.skip_nonfinite={self.skip_limit})')
    logging.warning(message)
    self.bar.write(message)

  def write(self, step: int) -> None:
    """Logs the window ending at `step` (nothing when it holds no step)."""
    if self.steps or self.window_skips:
      means = {f'train/{k}': v / max(self.steps, 1) for k, v in self.sums.items()
               if k not in ('tokens', 'sequences')}
      rates = self.throughput.update(self.tokens)
      scalars = {**means, **rates, 'train/first_step': self.first}
      if self.window_skips:
        scalars['train/skipped_steps'] = self.window_skips
      self.writer.write(step, scalars)
      postfix = {'loss': f"{means.get('train/loss', math.nan):.4f}"}
      if 'train/tokens_per_sec' in rates:
        postfix['tok/s'] = f"{rates['train/tokens_per_sec']:.0f}"
      self.bar.set_postfix(postfix, refresh=False)
    self._reset(step + 1)


class Trainer:
  """Runs an `Experiment`: `run()` trains (or resumes) and evaluates."""

  def __init__(self, experiment: experiment_lib.Experiment):
    if experiment.datasets is None:
      raise ValueError('the experiment has no data: build it with a workdir')
    self.experiment = experiment
    self.config = config = experiment.config
    self.workdir = experiment.workdir
    self.is_main = jax.process_index() == 0
    self.steps_per_call = config.train.steps_per_call
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
    if not self.strategy.lowers_from_shapes:
      done = concurrent.futures.Future()
      done.set_result(None)
      return done
    datasets = self.experiment.datasets
    # Shapes only: a throwaway iterator.
    train_input = strategy_lib.abstract(
        self._next_train_input(datasets.train_iter(), self.steps_per_call))
    eval_input = None
    if 'valid' in datasets.splits:
      eval_input = strategy_lib.abstract(
          self.strategy.put_batch(next(iter(datasets.eval_batches('valid')))))
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
    """(state in the strategy's layout, data iterator, the restored step or None), from the
    newest checkpoint that restores; a damaged one is reported and moved aside."""
    iterator = self.experiment.datasets.train_iter()
    for step in reversed(self.checkpointer.all_steps()):
      try:
        state, data_state, _ = self.checkpointer.restore(
            step, self.experiment.abstract_state,
            scan_layers=self.experiment.model_config.scan_layers)
      except Exception as error:   # a damaged checkpoint: files lost or truncated
        # (It fails on every process together: see Checkpointer._restore_items.)
        where = self.checkpointer.quarantine(step, move=self.is_main)
        self._say(f'checkpoint {step} does not restore ({typed_line(error)}); moved it '
                  f'to {where} and trying the one before it')
        continue
      if data_state:
        iterator.set_state(self._own_data_state(data_state, step))
      return self.strategy.put_state(state), iterator, step
    return (self.strategy.put_state(self.experiment.init_state(self.experiment.rng)),
            iterator, None)

  def save(self, state, iterator, metrics=None) -> None:
    host_state = self.strategy.one_copy(state)
    step = int(jax.device_get(host_state.step))
    self.checkpointer.save(step, host_state, _gathered_data_state(iterator),
                           self.config.to_dict(), metrics=metrics)

  def _own_data_state(self, data_state: dict, step: int) -> dict:
    """This process's data position out of a checkpoint's data item."""
    if PROCESS_STATES not in data_state:
      return data_state        # written by one process
    states = data_state[PROCESS_STATES]
    if len(states) == jax.process_count():
      return states[jax.process_index()]
    # Another process count shards the data differently: no position maps exactly.
    self._say(f'checkpoint {step} was written by {len(states)} processes, this run has '
              f'{jax.process_count()}: every process resumes from process 0\'s data '
              'position (the data order differs from an uninterrupted run)')
    return states[0]

  def _host_lost(self, error: BaseException) -> HostLost:
    """The one line of a survivor: who was lost, and the checkpoint the run resumes from."""
    count, me = jax.process_count(), jax.process_index()
    others = [i for i in range(count) if i != me]
    # A collective fails on every survivor at once; which peer closed it, it does not say
    # (peers.py's watcher does, when it sees the loss first), so with more than two
    # processes the line names them all.
    who = (f'process {others[0]}' if len(others) == 1
           else 'one of processes ' + ', '.join(map(str, others)))
    logging.info('process %d of %d: lost %s: %s', me, count, who, error)
    return HostLost(self._lost_line(who, ' '.join(str(error).split())[:160]))

  def _lost_line(self, who: str, reason: str) -> str:
    count, me = jax.process_count(), jax.process_index()
    folder = self.checkpointer.directory
    # Committed ones only: in a bucket Orbax writes a step's folder in place and marks it
    # complete last (commit_success.txt), so a folder's name alone may be a torn save.
    steps = ocp.step.checkpoint_steps(folder) if folder.is_dir() else []
    where = (f'The newest checkpoint is step {max(steps)} in {folder}: start every process '
             'again to resume from it' if steps else
             'No checkpoint was written yet: start every process again')
    return f'process {me} of {count} lost contact with {who} ({reason}). {where}'

  def _say(self, line: str) -> None:
    """A line for the user on stdout (process 0), also logged."""
    logging.info(line)
    if self.is_main:
      print(line, flush=True)

  def _summary(self, start: int, restored: int | None) -> None:
    exp, config = self.experiment, self.config
    cfg = exp.model_config
    params = sum(x.size for x in jax.tree.leaves(exp.abstract_state.params))
    layers = (f'{cfg.num_layers}+{cfg.resolved_num_decoder_layers}'
              if exp.task.model_class.__name__ == 'Transformer' else f'{cfg.num_layers}')
    mesh = ' '.join(f'{k}={v}' for k, v in exp.mesh.shape.items())
    devices = jax.devices()
    info = exp.datasets.info
    data = ', '.join(f'{k.replace("_", " ")} {v:,}' for k, v in info.items())
    status = (f'resuming from step {start} of {config.train.num_steps}' if restored is not None
              else f'starting fresh ({config.train.num_steps} steps)')
    self._say(f'task {exp.task.name}: {type(exp.model).__name__}, {layers} layers, '
              f'd_model {cfg.d_model}, {params / 1e6:.2f}M parameters, {cfg.dtype}'
              f'{", scanned layers" if cfg.scan_layers else ""}')
    self._say(f'devices: {len(devices)} x {devices[0].device_kind} in '
              f'{jax.process_count()} process(es), mesh {mesh} ({config.parallelism}); '
              f'global batch {config.train.batch_size} rows')
    self._say(f'data: {data}; splits {"/".join(exp.datasets.splits)}')
    self._say(f'workdir {self.workdir}: {status}')

  # --- the loop -----------------------------------------------------------------------------

  def run(self) -> dict[str, float]:
    """Trains to `train.num_steps` (resuming the workdir's newest good checkpoint), then
    prints examples; returns the last evaluation's metrics ({} if nothing was trained)."""
    cfg = self.config.train
    num_steps = cfg.num_steps
    newest = self.checkpointer.latest_step()
    if newest is not None and newest >= num_steps:
      self._say(f'workdir {self.workdir}: finished (step {newest} of {num_steps}); nothing '
                f'to train (`python -m transformer evaluate --workdir {self.workdir}` scores it)')
      return {}
    peers.describe(lambda lost, reason: self._lost_line(f'process {lost}', reason))
    compiling = self.compile_ahead()
    state, iterator, restored = self.restore_or_init()
    start = int(self.strategy.one_copy(state.step))
    self._summary(start, restored)
    if self.is_main:
      (self.workdir / 'config.json').write_text(self.config.to_json_best_effort(indent=2))
    writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main, resume_step=start)
    writer = wandb_log.attach(writer, self.config, self.workdir, enabled=self.is_main)
    task, model_config = self.experiment.task, self.experiment.model_config
    flops_per_token = task.flops_per_token(model_config,
                                           task.sequence_lengths(self.config.data))
    # While the steps compile: the end-of-run examples, from the initial parameters, so that
    # their decoding loop is compiled by the end.
    self.evaluator.sample_outputs(state.params, cfg.num_examples_to_show)
    compiling.result()   # before the peak is measured: nothing else may run then
    peak, peak_source = metrics_lib.device_peak_flops()
    throughput = metrics_lib.Throughput(flops_per_token, peak * jax.device_count())
    logging.info('model FLOPs/token %.3g; peak %.3g FLOP/s per device (%s)',
                 flops_per_token, peak, peak_source)
    bar = tqdm(total=num_steps, initial=start, disable=not self.is_main, desc='train',
               dynamic_ncols=True, mininterval=1.0)
    log = _TrainLog(writer, throughput, bar, log_every=cfg.log_every, num_steps=num_steps,
                    skip_limit=cfg.skip_nonfinite, start=start)
    try:
      state, eval_metrics, preempted = self._train(state, iterator, start, log, writer,
                                                   throughput, bar)
    except _NonFinite as stop:
      bar.close()
      self.checkpointer.wait()
      writer.close()
      last = self.checkpointer.latest_step()
      values = stop.values
      raise RunStopped(
          f"step {stop.step}: the loss ({values['loss']:.4g}) or the gradient norm "
          f"({values['grad_norm']:.4g}) is not finite; stopped before it reached the "
          'parameters. '
          + (f'The newest checkpoint, step {last}, is finite: resume from it '
             if last is not None else 'No checkpoint was written yet: restart ')
          + 'with a lower optim.learning_rate (or train.skip_nonfinite=N to skip up to N '
          'such steps)') from None
    except Exception as error:   # noqa: BLE001 - a lost host is told apart below
      if not _peer_failure(error):
        raise
      bar.close()
      raise self._host_lost(error) from None
    bar.close()
    step = int(self.strategy.one_copy(state.step))
    if (preempted or num_steps > start) and step not in self.checkpointer.all_steps():
      self.save(state, iterator)
    self.checkpointer.wait()
    writer.flush()
    writer.close()
    self.final_state = self.strategy.one_copy(state)
    if preempted:
      logging.warning('SIGTERM: saved step %d and stopped', step)
      self._say(f'preempted: checkpoint saved at step {step}')
      return eval_metrics
    for line in self.evaluator.sample_outputs(state.params, cfg.num_examples_to_show):
      self._say(line)
    return eval_metrics

  def _train(self, state, iterator, start: int, log: _TrainLog, writer, throughput, bar
             ) -> tuple[Any, dict[str, float], bool]:
    """The steps from `start`: (final state, last evaluation, whether SIGTERM stopped it)."""
    cfg = self.config.train
    num_steps = cfg.num_steps
    eval_metrics: dict[str, float] = {}
    pending = None          # (first step, device metrics, steps) of the previous call

    def drain():
      nonlocal pending
      if pending is not None:
        log.add(pending[0], self._per_step_metrics(*pending[1:]))
        pending = None

    step = start
    profiler = StepProfiler(self.workdir / 'profile', *cfg.get('profile_steps', (0, 0)))
    with _Preemption() as preemption, contextlib.closing(profiler):
      while step < num_steps:
        if preemption.stop():
          drain()
          log.write(step)   # the window before the signal, labelled with its steps
          return state, eval_metrics, True
        # A call never crosses an evaluation or checkpoint step, nor the end.
        steps = min(self.steps_per_call, num_steps - step,
                    cfg.eval_every - step % cfg.eval_every,
                    cfg.checkpoint_every - step % cfg.checkpoint_every)
        profiler.before(step)
        state, device_metrics = self.strategy.train(state,
                                                    self._next_train_input(iterator, steps))
        profiler.after(step + steps, state)
        if pending is not None:  # the previous call's metrics, while this one runs
          drain()
        pending = (step + 1, device_metrics, steps)
        step += steps
        bar.update(steps)

        last = step == num_steps
        evaluate = step % cfg.eval_every == 0 or last
        checkpoint = step % cfg.checkpoint_every == 0 or last
        if evaluate or checkpoint:
          drain()   # every step's loss is seen (and found finite) before these
        if evaluate:
          eval_start = time.perf_counter()
          eval_metrics = self.evaluator.evaluate(state.params)
          writer.write(step, eval_metrics)
          bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.4g}'
                                                  for k, v in eval_metrics.items()))
          throughput.exclude(time.perf_counter() - eval_start)
        if checkpoint:
          self.save(state, iterator, eval_metrics if evaluate else None)
    drain()
    return state, eval_metrics, False


# What a collective or the coordination service says when a peer process died or is
# unreachable (gloo on CPUs, NCCL on GPUs, the coordination service's gRPC).
_PEER_FAILURE_MARKERS = ('gloo', 'nccl', 'connection reset', 'connection closed',
                         'connection refused', 'socket closed', 'heartbeat', 'unavailable:',
                         'broken pipe', 'end of file', 'task is set to error')


def _peer_failure(error: BaseException) -> bool:
  """Whether `error`, in a multi-process run, is another process lost (not a bug here)."""
  if jax.process_count() == 1 or isinstance(error, (_NonFinite, UserError)):
    return False
  text = ' '.join(str(e) for e in (error, error.__cause__, error.__context__) if e).lower()
  return any(marker in text for marker in _PEER_FAILURE_MARKERS)


PROCESS_STATES = 'process_states'   # the data item of a multi-process run's checkpoint


def _gathered_data_state(iterator) -> dict:
  """The data iterator's position, for the checkpoint: one process's own state, or with
  several processes `{PROCESS_STATES: [process 0's, process 1's, ...]}` (each shard has
  its own position; Orbax writes the item from process 0 only)."""
  own = iterator.get_state()
  if jax.process_count() == 1:
    return own
  encoded = np.frombuffer(json.dumps(own).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:encoded.size] = encoded
  every = multihost_utils.process_allgather(padded)
  return {PROCESS_STATES: [json.loads(row[:int(size)].tobytes().decode())
                           for row, size in zip(every, sizes.reshape(-1))]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """What `train.py` does: set up the process, take the workdir's lock, refuse to resume
  a different model, build the experiment and run it. Returns the final evaluation."""
  workdir = storage.path(workdir)   # a URL (gs://, s3://): etils.epath
  storage.check_bucket(workdir)     # one line when it is missing, before anything starts
  process.setup(config)
  checked = experiment_lib.check_config(config)   # before the workdir is created or touched
  created = not workdir.exists()
  workdir.mkdir(parents=True, exist_ok=True)
  try:
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
      if (workdir / 'checkpoints').is_dir():
        checkpointer = checkpoint_lib.Checkpointer(workdir / 'checkpoints', asynchronous=False)
        for step in reversed(checkpointer.all_steps()):
          try:
            saved = checkpointer.restore_config(step)
          except Exception:    # damaged: the trainer reports it and falls back
            continue
          check_resume(config, saved, workdir, step)
          break
        checkpointer.close()
      trainer = Trainer(experiment_lib.build(checked, workdir,
                                             local_dir=storage.local_dir(workdir)))
      return trainer.run()
  except UserError:
    # A run that could not start leaves no folder behind it (one it created, that is).
    if created and not (workdir / 'checkpoints').is_dir():
      storage.rmtree(workdir)
    raise
