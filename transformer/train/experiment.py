"""The experiment builder: a training config -> everything a run is made of.

    checked = check_config(config)             # task, model config, schedule, mesh
    experiment = build(checked, workdir)       # data, model, optimizer, state shapes
    Trainer(experiment).run()                  # transformer.train.loop

`check_config` is the one place where a config is checked (before any workdir is touched)
and becomes a task, a `ModelConfig`, a learning-rate schedule and a mesh; `build` makes
the rest from those pieces: the data, the model and optimizer, the abstract train state
with its shardings on the mesh, and the pure train and eval steps bound to the task.
`build` also takes a config and checks it itself. The trainer,
`transformer.train.trained_run` (the command line), the benchmarks and the notebooks all
use it.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable

import jax
import ml_collections
import optax
from flax import linen as nn
from jax.extend.core import jaxpr_as_fun
from jax.sharding import Mesh

from transformer import sharding
from transformer import storage
from transformer.config import ModelConfig
from transformer.data.datasets import Datasets, get_datasets
from transformer.errors import ConfigError
from transformer.tasks import Task, get_task
from transformer.train import optimizer as optimizer_lib
from transformer.train import step as step_lib
from transformer.train import strategy as strategy_lib
from transformer.train import wandb_log
from transformer.train.strategy import STRATEGIES


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None
                 ) -> ModelConfig:
  """`ModelConfig(**config.model)`, with `vocab_size` None meaning the tokenizer's.

  Saved configs of earlier versions had `remat: bool`; it maps onto `remat_policy`."""
  fields = config.model.to_dict()
  if 'remat' in fields:
    fields.setdefault('remat_policy', 'full' if fields.pop('remat') else 'none')
  if fields.get('vocab_size') is None:
    fields['vocab_size'] = vocab_size
  try:
    return ModelConfig(**fields)
  except (TypeError, ValueError) as error:
    raise ConfigError(f'config.model: {error}') from error


@dataclasses.dataclass(frozen=True)
class CheckedConfig:
  """What `check_config` found the config to mean; `build` starts from it."""

  config: ml_collections.ConfigDict
  task: Task
  model_config: ModelConfig    # vocab_size as configured (None: the tokenizer's)
  schedule: optax.Schedule
  mesh: Mesh


def check_config(config: ml_collections.ConfigDict, mesh: Mesh | None = None
                 ) -> CheckedConfig:
  """Checks what can be checked without data (the task, the model, the schedule, the
  strategy, W&B, the mesh and the batch sizes) and returns the pieces made on the way; raises
  `ConfigError` naming the field. `train_and_evaluate` calls it before it creates or
  touches the workdir."""
  if config.parallelism not in STRATEGIES:
    raise ConfigError(f'config.parallelism must be one of {sorted(STRATEGIES)}, not '
                      f'{config.parallelism!r}')
  # A vocabulary of 1 stands in for the tokenizer's while the other fields are checked.
  cfg = model_config(config, config.model.vocab_size or 1)
  if cfg.param_dtype != 'float32':
    raise ConfigError(
        f"model.param_dtype={cfg.param_dtype!r}: training keeps float32 parameters and "
        "optimizer state (Adam's updates are below bfloat16's precision); set "
        "model.dtype='bfloat16' for bfloat16 compute")
  wandb_log.check(config)
  train = config.train
  if train.steps_per_call < 1:
    raise ConfigError(f'train.steps_per_call must be >= 1, not {train.steps_per_call}')
  for name in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'max_to_keep'):
    if train[name] < 1:
      raise ConfigError(f'train.{name} must be >= 1, not {train[name]}')
  schedule = optimizer_lib.make_schedule(config.optim, cfg.d_model, train.num_steps)
  task = get_task(config.task)
  mesh = mesh or sharding.make_mesh(config.mesh.to_dict())
  # The batch sizes split over the processes, the devices and the micro-batches.
  if config.parallelism == 'pmap':
    shards, where = jax.local_device_count() * jax.process_count(), 'devices (pmap)'
  else:
    shards = mesh.shape['data'] * mesh.shape['fsdp']
    where = f'batch shards of the mesh (data {mesh.shape["data"]} x fsdp {mesh.shape["fsdp"]})'
  for name, size in (('train.batch_size', train.batch_size),
                     ('train.eval_batch_size', train.eval_batch_size or train.batch_size)):
    if size < 1 or size % shards:
      raise ConfigError(f'{name}={size} does not split over the {shards} {where}: use a '
                        f'multiple of {shards}')
  if train.batch_size % (train.grad_accum_steps * shards):
    raise ConfigError(f'train.batch_size={train.batch_size} does not split into '
                      f'train.grad_accum_steps={train.grad_accum_steps} micro-batches over '
                      f'{shards} {where}')
  return CheckedConfig(config=config, task=task,
                       model_config=cfg.replace(vocab_size=config.model.vocab_size),
                       schedule=schedule, mesh=mesh)


@dataclasses.dataclass
class Experiment:
  """What `build` makes; the loop and the evaluator only execute it."""

  config: ml_collections.ConfigDict
  task: Task
  model_config: ModelConfig
  model: nn.Module
  schedule: optax.Schedule
  optimizer: optax.GradientTransformation
  mesh: Mesh
  state_sharding: Any          # NamedShardings of the (unboxed) TrainState
  abstract_state: Any          # ShapeDtypeStructs carrying those shardings
  init_state: Callable[[jax.Array], step_lib.TrainState]   # rng -> sharded fresh state
  train_fn: Callable           # step.train_step bound to model, task and config
  eval_fn: Callable            # step.eval_step bound likewise
  datasets: Datasets | None = None
  workdir: Any = None         # the run's folder: a pathlib.Path or a URL's epath.Path

  @property
  def rng(self) -> jax.Array:
    return jax.random.PRNGKey(self.config.seed)


def build(config: ml_collections.ConfigDict | CheckedConfig,
          workdir: str | pathlib.Path | None = None, *, local_dir=None,
          vocab_size: int | None = None, mesh: Mesh | None = None) -> Experiment:
  """Builds a run's pieces from its checked config.

  Args:
    config: `check_config`'s result, or a training config
      (`transformer.train.defaults.base_config()` and changes), which is checked here.
    workdir: the run folder; with it, the data are built (or reloaded) there and the model's
      vocabulary is the tokenizer's. Without it, no data: give `vocab_size` when the config
      leaves the model's vocabulary to the tokenizer (benchmarks, restoring a run).
    local_dir: for a URL workdir, this host's folder for its tokenizer and token store
      (`storage.local_dir(workdir)`, which `train_and_evaluate` gives).
    mesh: default: `config.mesh` over all devices (for a config not yet checked).
  """
  checked = config if isinstance(config, CheckedConfig) else check_config(config, mesh)
  config, task = checked.config, checked.task
  schedule = checked.schedule
  tx = optimizer_lib.make_optimizer(config.optim, schedule)
  datasets = None
  if workdir is not None:
    datasets = get_datasets(
        config.data, task.data_needs(config.data), workdir=workdir, local_dir=local_dir,
        global_batch_size=config.train.batch_size, seed=config.seed,
        eval_batch_size=config.train.eval_batch_size or None)
    vocab_size = datasets.vocab_size
    workdir = storage.path(workdir)    # for the trainer: a URL's stays one (etils.epath)
  # The config's vocabulary wins; None means the tokenizer's (or the one given).
  vocab_size = checked.model_config.vocab_size or vocab_size
  if vocab_size is None:
    raise ConfigError('config.model.vocab_size is None (the tokenizer\'s), but no data were '
                      'built: pass workdir= or vocab_size=')
  cfg = checked.model_config.replace(vocab_size=vocab_size)
  model = task.model_class(cfg)

  # The model is traced once: the jaxpr gives the state's shapes (and so its shardings),
  # and the jitted initializer replays it rather than tracing the model a second time.
  init_jaxpr, boxed = jax.make_jaxpr(step_lib.state_initializer(model, task, tx),
                                     return_shape=True)(jax.random.PRNGKey(0))
  mesh = checked.mesh
  state_sharding = sharding.state_shardings(boxed, mesh)
  abstract = strategy_lib.abstract(nn.meta.unbox(boxed), state_sharding)
  boxed_tree = jax.tree.structure(boxed)
  init_state = jax.jit(
      lambda rng: nn.meta.unbox(jax.tree.unflatten(boxed_tree, jaxpr_as_fun(init_jaxpr)(rng))),
      out_shardings=state_sharding)

  train_fn = functools.partial(
      step_lib.train_step, model=model, task=task,
      dropout_key=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
      label_smoothing=config.train.label_smoothing,
      grad_accum_steps=config.train.grad_accum_steps, learning_rate_fn=schedule)
  eval_fn = functools.partial(step_lib.eval_step, model=model, task=task)
  return Experiment(config=config, task=task, model_config=cfg, model=model,
                    schedule=schedule, optimizer=tx, mesh=mesh, state_sharding=state_sharding,
                    abstract_state=abstract, init_state=init_state, train_fn=train_fn,
                    eval_fn=eval_fn, datasets=datasets, workdir=workdir)
