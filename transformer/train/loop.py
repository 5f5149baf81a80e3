"""`train_and_evaluate(config, workdir)`: the training loop behind `train.py`.

The loop owns I/O: data, checkpoints, evaluation, metric writing and signals. The
step functions in `step.py` stay pure. Metrics of step s are fetched after step s + 1 has
been dispatched, so logging never stalls the device.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from transformer import data as data_lib
from transformer import inference, models, sharding
from transformer.config import ModelConfig
from transformer.train import checkpoint as checkpoint_lib
from transformer.train import metrics as metrics_lib
from transformer.train import optimizer as optimizer_lib
from transformer.train import step as step_lib

MODEL_CLASSES = {
    'translation': models.Transformer,
    'lm': models.DecoderLM,
    'mlm': models.EncoderModel,
    'classification': models.EncoderModel,
}


def split_cpu(config: ml_collections.ConfigDict) -> None:
  """Splits the CPU into `config.cpu_devices` XLA devices, for data parallelism on a host
  without accelerators.

  One XLA CPU device runs a small model's step as a chain of small kernels that leaves
  cores idle; two devices, each with half of the batch, keep them busy (the train step of
  configs/shakespeare_char.py is about 30% faster on 2 cores). Only possible before JAX
  starts its backends, and never overrides an explicit
  XLA_FLAGS=--xla_force_host_platform_device_count.
  """
  count = config.get('cpu_devices', 0)
  if not count or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # backends already running (a notebook, a test): keep their devices
    logging.info('cpu_devices=%d ignored: JAX is already initialized', count)


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize` when the config or the environment asks for processes."""
  dist = config.get('distributed')
  wanted = ((dist is not None and (dist.get('num_processes', 1) > 1 or dist.get('auto')))
            or os.environ.get('JAX_COORDINATOR_ADDRESS'))
  if not wanted or jax.distributed.is_initialized():
    return
  # CPU processes talk through gloo (GPUs and TPUs bring their own collectives).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if dist is not None and dist.get('num_processes', 1) > 1:
    jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                               num_processes=dist.num_processes, process_id=dist.process_id)
  else:
    jax.distributed.initialize()  # pods and SLURM clusters describe themselves


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  """`ModelConfig(**config.model)`, with `vocab_size: 0` meaning "the tokenizer's"."""
  fields = config.model.to_dict()
  if not fields.get('vocab_size'):
    fields['vocab_size'] = vocab_size
  return ModelConfig(**fields)


def example_inputs(task: str, length: int = 8) -> tuple[jax.Array, ...]:
  tokens = jnp.ones((1, length), jnp.int32)
  return (tokens, tokens) if task == 'translation' else (tokens,)


def init_fn(model: nn.Module, task: str, tx) -> Any:
  """rng -> TrainState with logically-annotated ("boxed") parameters and moments."""
  def init(rng):
    variables = model.init(rng, *example_inputs(task))
    state = step_lib.TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx)
    # A strongly typed step (flax starts from a Python 0): a fresh state and a restored one
    # then share one compiled train step.
    return state.replace(step=jnp.zeros((), jnp.int32))
  return init


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
  """Builds everything one run needs from its config; `run()` trains and evaluates."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    split_cpu(config)
    maybe_initialize_distributed(config)
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.task = config.task
    self.is_main = jax.process_index() == 0
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.datasets = data_lib.get_datasets(
        config.data, task=self.task, workdir=self.workdir,
        global_batch_size=config.train.batch_size, seed=config.seed,
        eval_batch_size=config.train.get('eval_batch_size') or None)
    self.model_config = model_config(config, self.datasets.vocab_size)
    self.model = MODEL_CLASSES[self.task](self.model_config)
    self.schedule = optimizer_lib.make_schedule(config.optim, self.model_config.d_model,
                                                config.train.num_steps)
    self.tx = optimizer_lib.make_optimizer(config.optim, self.schedule)
    self.parallelism = config.get('parallelism', 'jit')
    self.steps_per_call = config.train.get('steps_per_call', 1)
    if self.steps_per_call < 1:
      raise ValueError(f'train.steps_per_call must be >= 1, not {self.steps_per_call}')
    self.mesh = sharding.make_mesh(config.mesh.to_dict())
    self.checkpointer = checkpoint_lib.Checkpointer(
        self.workdir / 'checkpoints', max_to_keep=config.train.max_to_keep,
        best_metric=config.train.get('best_metric') or None,
        best_mode=config.train.get('best_mode', 'min'))
    self._build_state_and_steps()

  # --- state and compiled steps -------------------------------------------------------------

  def _build_state_and_steps(self) -> None:
    init = init_fn(self.model, self.task, self.tx)
    rng = jax.random.PRNGKey(self.config.seed)
    boxed = jax.eval_shape(init, rng)
    self.state_sharding = sharding.state_shardings(boxed, self.mesh)
    self.abstract_state = checkpoint_lib.abstract_with_shardings(nn.meta.unbox(boxed),
                                                                 self.state_sharding)
    self._init = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=self.state_sharding)
    self._rng = rng

    train_fn = functools.partial(
        step_lib.train_step, model=self.model, task=self.task,
        dropout_key=jax.random.fold_in(rng, 1),
        label_smoothing=self.config.train.label_smoothing,
        grad_accum_steps=self.config.train.grad_accum_steps,
        learning_rate_fn=self.schedule)
    eval_fn = functools.partial(step_lib.eval_step, model=self.model, task=self.task)
    if self.parallelism == 'pmap':
      self.pmap_mesh = sharding.pmap_mesh()
      self.p_train, self.p_eval = step_lib.pmap_steps(train_fn, eval_fn, sharding.PMAP_AXIS,
                                                      self.steps_per_call)
    elif self.parallelism == 'jit':
      self.p_train, self.p_eval = step_lib.jit_steps(
          train_fn, eval_fn, self.state_sharding, self.state_sharding.params,
          sharding.batch_sharding(self.mesh), sharding.replicated(self.mesh),
          self.steps_per_call)
    else:
      raise ValueError(f"parallelism must be 'jit' or 'pmap', not {self.parallelism!r}")

  def _to_device_state(self, state):
    if self.parallelism == 'pmap':
      return sharding.replicate_for_pmap(jax.device_get(state), self.pmap_mesh)
    return state

  def _step_of(self, state) -> int:
    return int(self._one_copy(state.step))

  def _one_copy(self, tree):
    """One logical copy of a step's input or output: under pmap, the first device's (every
    device holds the same state and metrics); what checkpoints hold."""
    return sharding.unreplicate(tree) if self.parallelism == 'pmap' else tree

  def _put_batch(self, batch, stacked: bool = False):
    if self.parallelism == 'pmap':
      return sharding.split_for_pmap(batch, self.pmap_mesh, stacked)
    return sharding.global_batch(batch, self.mesh, stacked)

  def _next_train_input(self, iterator, steps: int):
    """The next `steps` batches as one input of `p_train` (stacked when steps_per_call > 1)."""
    if self.steps_per_call == 1:
      return self._put_batch(next(iterator))
    batches = [next(iterator) for _ in range(steps)]
    return self._put_batch({k: np.stack([b[k] for b in batches]) for k in batches[0]},
                           stacked=True)

  def _scalar_metrics(self, metrics):
    return metrics_lib.to_float(self._one_copy(metrics))

  def _per_step_metrics(self, metrics, steps: int) -> list[dict[str, float]]:
    """The train step's metrics as one dict of floats per step (one transfer)."""
    if self.steps_per_call == 1:
      return [self._scalar_metrics(metrics)]
    stacked = jax.device_get(self._one_copy(metrics))
    return [{k: float(v[i]) for k, v in stacked.items()} for i in range(steps)]

  def compile_ahead(self) -> concurrent.futures.Future:
    """Compiles the train and eval steps in a background thread.

    XLA compiles while the main thread initialises (or restores) the state and opens the
    metric writers, which on a small model saves seconds of start-up. The later calls find
    the executables in jit's (or pmap's) cache: the inputs here are shaped and placed like
    the real ones.
    """
    like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    # Shapes only: a throwaway iterator.
    train_input = jax.tree.map(
        like, self._next_train_input(self.datasets.train_iter(), self.steps_per_call))
    eval_input = None
    if 'valid' in self.datasets.splits:
      eval_input = jax.tree.map(
          like, self._put_batch(next(iter(self.datasets.eval_batches('valid')))))
    state = self.abstract_state
    if self.parallelism == 'pmap':
      state = sharding.abstract_replicate_for_pmap(state, self.pmap_mesh)

    def compile_steps():
      self.p_train.lower(state, train_input).compile()
      if eval_input is not None:
        self.p_eval.lower(state.params, eval_input).compile()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='compile')
    future = pool.submit(compile_steps)
    pool.shutdown(wait=False)
    return future

  def restore_or_init(self):
    """(state, data iterator), from the newest checkpoint when there is one."""
    iterator = self.datasets.train_iter()
    step = self.checkpointer.latest_step()
    if step is None:
      state = self._init(self._rng)
    else:
      state, data_state, _ = self.checkpointer.restore(step, self.abstract_state)
      if data_state:
        iterator.set_state(data_state)
      logging.info('restored step %d from %s', step, self.workdir / 'checkpoints')
    return self._to_device_state(state), iterator

  def save(self, state, iterator, metrics=None) -> None:
    host_state = self._one_copy(state)
    step = int(jax.device_get(host_state.step))
    self.checkpointer.save(step, host_state, iterator.get_state(), self.config.to_dict(),
                           metrics=metrics)

  # --- evaluation ---------------------------------------------------------------------------

  def evaluate(self, params, split: str = 'valid') -> dict[str, float]:
    totals: dict[str, float] = {}
    max_batches = self.config.train.eval_batches
    for i, batch in enumerate(self.datasets.eval_batches(split)):
      if max_batches and i >= max_batches:
        break
      # Fetched batch by batch: queueing many multi-device steps at once can stall XLA's
      # CPU collectives (an all-reduce rendezvous timed out with 145 queued batches).
      sums = self._scalar_metrics(self.p_eval(params, self._put_batch(batch)))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + v
    if not totals:
      return {}
    summary = metrics_lib.to_float(step_lib.summarise(totals))
    out = {'loss': summary['nll'], 'accuracy': summary['accuracy'],
           'perplexity': float(np.exp(min(summary['nll'], 50.0)))}
    if 'exact_match' in summary:
      out['exact_match'] = summary['exact_match']
    if self.task == 'translation' and self.config.train.eval_bleu:
      out['bleu'] = self.bleu(params, split)
    return {f'{split_prefix(split)}/{k}': v for k, v in out.items()}

  def translate(self, params, sources, beam_size=None) -> list[str]:
    decode_cfg = self.config.decode
    return inference.translate_texts(
        self.model, {'params': params}, self.datasets.tokenizer, sources,
        beam_size=beam_size or decode_cfg.beam_size, alpha=decode_cfg.alpha,
        max_extra_len=decode_cfg.max_extra_len)

  def _host_params(self, params):
    """The parameters as host arrays on every process (a collective: call it everywhere)."""
    if jax.process_count() > 1:
      return multihost_utils.process_allgather(params, tiled=True)
    return params

  def bleu(self, params, split: str = 'valid') -> float:
    """sacreBLEU of beam-search translations of the split against its references.

    Every process decodes the whole split (on its own devices, from host parameters), so
    all of them log and checkpoint the same metrics.
    """
    params = self._host_params(params)
    sources, references = self.datasets.eval_texts(split)
    limit = self.config.train.bleu_examples or len(sources)
    hypotheses = self.translate(params, sources[:limit])
    return metrics_lib.corpus_bleu(hypotheses, references[:limit])

  def show_examples(self, params) -> list[str]:
    """A few greedy translations (or LM samples) of validation data, as printable lines."""
    count = self.config.train.num_examples_to_show
    if not count or self.task not in ('translation', 'lm'):
      return []
    params = self._host_params(params)
    if not self.is_main:
      return []
    if self.task == 'translation':
      sources, references = self.datasets.eval_texts('valid')
      hypotheses = self.translate(params, sources[:count], beam_size=1)
      return [f'source: {s}\n  reference: {r}\n  output:    {h}'
              for s, r, h in zip(sources, references, hypotheses)]
    batch = next(iter(self.datasets.eval_batches('valid')))
    prompt = self.datasets.tokenizer.decode(batch['inputs'][0, :16].tolist())
    # One context's worth: a single compiled generation loop.
    new_tokens = max(self.model_config.max_len - 16, 1)
    samples = inference.generate_text(self.model, {'params': params}, self.datasets.tokenizer,
                                      prompt, max_new_tokens=new_tokens, temperature=0.8,
                                      top_k=40, num_samples=count)
    return [f'prompt: {prompt!r}\n  sample: {s!r}' for s in samples]

  # --- the loop -----------------------------------------------------------------------------

  def run(self) -> dict[str, float]:
    cfg = self.config.train
    if self.is_main:
      (self.workdir / 'config.json').write_text(self.config.to_json_best_effort(indent=2))
    compiling = self.compile_ahead()
    writer = metrics_lib.MetricWriter(self.workdir, enabled=self.is_main)
    state, iterator = self.restore_or_init()
    start = self._step_of(state)
    num_steps = cfg.num_steps
    lengths = self._lengths()
    flops_per_token = metrics_lib.train_flops_per_token(self.model_config, self.task, *lengths)
    # While the steps compile: the end-of-run examples, from the initial parameters, so that
    # their decoding loop is compiled by the end.
    self.show_examples(self._one_copy(state.params))
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
        state, device_metrics = self.p_train(state, self._next_train_input(iterator, steps))
        if pending is not None:  # the previous call's metrics, while this one runs
          account(pending[0], self._per_step_metrics(*pending[1:]))
        pending = (step + 1, device_metrics, steps)
        step += steps
        bar.update(steps)

        last = step == num_steps
        if step % cfg.eval_every == 0 or last:
          eval_start = time.perf_counter()
          eval_metrics = self.evaluate(state.params)  # replicated under pmap
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
      host_step = self._step_of(state)
      if host_step not in self.checkpointer.all_steps():
        self.save(state, iterator)
    self.checkpointer.wait()
    writer.flush()
    writer.close()
    if preempted:
      logging.warning('SIGTERM: saved step %d and stopped', host_step)
      print(f'preempted: checkpoint saved at step {host_step}', flush=True)
    self.final_state = self._one_copy(state)
    if not preempted:
      for line in self.show_examples(self.final_state.params):
        print(line, flush=True)
    return eval_metrics

  def _lengths(self) -> tuple[int, int]:
    data = self.config.data
    source = data.get('max_source_len') or data.get('max_len', 64)
    target = data.get('max_target_len') or data.get('max_len', 64)
    return source, target

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


def split_prefix(split: str) -> str:
  return 'eval' if split in ('valid', 'validation') else split


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path
                       ) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final evaluation metrics."""
  trainer = Trainer(config, workdir)
  return trainer.run()
