"""GPU programs from any host: `jax.export` of a run's train step and of its cached decoding
step, for one NVIDIA GPU.

    exported = export_train_step(config)          # platforms=('cuda',)
    custom_calls(exported)      # {'__cudnn$fmhaSoftmax', '__cudnn$fmhaSoftmaxBackward', ...}
    exported.mlir_module()      # its StableHLO
    blob = exported.serialize() # jax.export.deserialize(blob).call(...) on a GPU host
    exported = export_decode_step(config, batch_size=8, max_length=256)

The train step is the one a run compiles: `experiment.check_config` and `build` (model,
optimizer, remat, dtypes), the jit strategy with its donation and `train.steps_per_call`,
batches shaped like the data pipeline's (`plan.abstract_batch`), with the config's mesh
laid on one device. As for a TPU plan (`transformer.train.plan`), `model.cpu_matmul` None
becomes False, so the CPU weight-gradient matmul stays out of a GPU program; and attention
is traced for the GPU (`attention.tracing_for`), so `attention_impl='auto'` takes cuDNN's
fused attention where the mask allows (causal and end-of-row padding: unpacked rows,
padded sources) and the einsum path for packed rows. The decoding step is
`DecoderLM.decode_step` (or the encoder-decoder's, reading `Transformer.decoder_memory`)
for one new token per row against a cache of `max_length` slots.

cuDNN: jax's cuDNN attention asks cuDNN for its version while it traces, which needs jax's
CUDA plugin and cuDNN's library on this host (`pip install -e '.[gpu-export]'`; no GPU is
needed); without them a program with cuDNN attention does not export (`UserError`). Its
custom calls have no compatibility guarantee across jax versions, so `CUDNN_CALLS` are
allowed by name: a serialized program holding them runs under the jax that exported it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import export

from transformer import attention, models, sharding
from transformer.errors import UserError

# The fused attention calls our route emits (no bias, no dropout: `_library_attention`).
CUDNN_CALLS = ('__cudnn$fmhaSoftmax', '__cudnn$fmhaSoftmaxBackward')
_CUSTOM_CALL = re.compile(r'custom_call @([\w$.\-]+)\(|call_target_name = "([^"]+)"')


@contextlib.contextmanager
def _tracing_for_gpu() -> Iterator[None]:
  """Attention traced for the GPU; jax's missing cuDNN becomes one line naming the extra."""
  try:
    with attention.tracing_for('gpu'):
      yield
  except RuntimeError as error:
    if 'cudnn' not in str(error).lower():
      raise
    # jax's "cuDNN is not detected." (no CUDA plugin) or the plugin's "cuDNN not found."
    raise UserError(f"cuDNN attention exports only with jax's CUDA plugin and cuDNN "
                    f"installed ({error}): pip install -e '.[gpu-export]', or set "
                    "model.attention_impl='xla'") from None


def _build(config):
  """(experiment, one-device mesh) of `config`, the vocabulary as configured."""
  from transformer.train import experiment as experiment_lib
  from transformer.train import plan
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  checked = experiment_lib.check_config(config, mesh=mesh)
  # Building traces the model's initializer (for the state's shapes) as for this host,
  # which needs no cuDNN for 'auto'; 'cudnn' traces nowhere but for a GPU.
  gpu = config.model.attention_impl == 'cudnn'
  with _tracing_for_gpu() if gpu else contextlib.nullcontext():
    return experiment_lib.build(checked, vocab_size=plan.vocab_size(config)), mesh


def _export(fn, platforms: Sequence[str], *args) -> export.Exported:
  checks = [export.DisabledSafetyCheck.custom_call(name) for name in CUDNN_CALLS]
  with _tracing_for_gpu():
    return export.export(fn, platforms=tuple(platforms), disabled_checks=checks)(*args)


def export_train_step(config, platforms: Sequence[str] = ('cuda',)) -> export.Exported:
  """`config`'s train step for one GPU, over the state's leaves (donated):

      (jax.tree.leaves(state), batch) -> (the new state's leaves, metrics)

  The state's leaves rather than its `TrainState`: that pytree carries the model's apply
  function and the optimizer as static metadata, which neither match another build's nor
  serialize. `platforms` may add others (e.g. 'cpu', to run the same program here) when
  no cuDNN call is in it."""
  from transformer.train import plan
  from transformer.train.strategy import JitStrategy
  config = plan.for_accelerator(config, 'a GPU export takes')
  experiment, mesh = _build(config)
  steps_per_call = config.train.steps_per_call
  strategy = JitStrategy(mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn, steps_per_call)
  batch = plan.abstract_batch(config, experiment.task, mesh, steps_per_call,
                              experiment.model_config.vocab_size)
  treedef = jax.tree.structure(experiment.abstract_state)

  def train(leaves, batch):
    state, metrics = strategy.train(jax.tree.unflatten(treedef, leaves), batch)
    return jax.tree.leaves(state), metrics
  return _export(jax.jit(train, donate_argnums=0), platforms,
                 jax.tree.leaves(experiment.abstract_state), batch)


def _unsharded(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def export_decode_step(config, batch_size: int, max_length: int,
                       platforms: Sequence[str] = ('cuda',)) -> export.Exported:
  """One cached decoding step of `config`'s model for one GPU, one new token per row:

      DecoderLM:   (params, tokens [B, 1], cache) -> (logits [B, 1, V], cache)
      Transformer: (params, tokens [B, 1], cache, memory) -> (logits, cache)

  the cache from `model.init_cache(B, max_length)` (donated), the encoder-decoder's memory
  from `decoder_memory` of [B, S] sources, S the data's source length."""
  from transformer.train import plan
  config = plan.for_accelerator(config, 'a GPU export takes')
  experiment, _ = _build(config)
  model, cfg = experiment.model, experiment.model_config
  if not isinstance(model, (models.DecoderLM, models.Transformer)):
    raise UserError(f'{type(model).__name__} has no decoding step: export_decode_step '
                    'takes a DecoderLM or a Transformer')
  if cfg.position != 'rope' and max_length > cfg.max_len:
    raise UserError(f'max_length={max_length}: the model encodes max_len={cfg.max_len} '
                    'positions')
  params = _unsharded(experiment.abstract_state.params)
  tokens = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32)
  cache = jax.eval_shape(lambda: model.init_cache(batch_size, max_length))
  if isinstance(model, models.DecoderLM):
    def step(params, tokens, cache):
      return model.apply({'params': params}, tokens, cache, method=model.decode_step)
    return _export(jax.jit(step, donate_argnums=2), platforms, params, tokens, cache)

  source_length = experiment.task.sequence_lengths(config.data)['inputs']
  sources = jax.ShapeDtypeStruct((batch_size, source_length), jnp.int32)
  # Only the memory's shapes: the einsum path has the same ones and needs no cuDNN here.
  encoder = model.clone(config=cfg.replace(attention_impl=None))
  memory = jax.eval_shape(
      lambda p, s: encoder.apply({'params': p}, s, method=encoder.decoder_memory),
      params, sources)

  def step(params, tokens, cache, memory):
    return model.apply({'params': params}, tokens, cache, memory, method=model.decode_step)
  return _export(jax.jit(step, donate_argnums=2), platforms, params, tokens, cache, memory)


def custom_calls(exported: export.Exported) -> set[str]:
  """The custom-call targets in an exported module (cuDNN's fused attention, callbacks)."""
  return {a or b for a, b in _CUSTOM_CALL.findall(exported.mlir_module())}
