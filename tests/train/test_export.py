"""`jax.export` of the train step and of the cached decoding step for CUDA, on this CPU host.

The programs without cuDNN are also lowered for 'cpu' and run here against the steps they
were exported from. The cuDNN test needs jax's CUDA plugin and cuDNN's library (the
`gpu-export` extra, which `test` pulls); no GPU.
"""

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo

from tests.helpers import tiny_config
from transformer import sharding
from transformer.errors import UserError
from transformer.train import experiment as experiment_lib
from transformer.train import export as export_lib
from transformer.train import plan
from transformer.train.strategy import JitStrategy

# head_dim 32: cuDNN's flash attention takes head widths that are multiples of 8.
SIZE = {'model.d_model': 64, 'model.num_heads': 2, 'model.mlp_dim': 128,
        'model.vocab_size': 128}


def _config(task='lm', **changes):
  changes = {'data.pack': False,
             **{k if '.' in k else f'model.{k}': v for k, v in changes.items()}}
  config = tiny_config(**SIZE, **changes)
  config.task = task
  return config


def require_cudnn() -> None:
  """Skips, saying what is missing, where jax's cuDNN attention cannot trace."""
  versions = fused_attention_stablehlo.cuda_versions
  missing = None
  if versions is None:
    missing = 'jax found no CUDA plugin (jax_cuda12_plugin._versions)'
  else:
    try:
      versions.cudnn_get_version()
    except RuntimeError as error:
      missing = f'the CUDA plugin found no cuDNN library ({error})'
  if missing:
    pytest.skip(f"jax's cuDNN attention traces only with its CUDA plugin and cuDNN "
                f"(pip install -e '.[gpu-export]'): {missing}")


def _random_batch(shapes, vocab, seed=0):
  rng = np.random.default_rng(seed)
  return {k: (rng.integers(5, vocab, s.shape) if k in ('inputs', 'targets')
              else np.ones(s.shape)).astype(s.dtype) for k, s in shapes.items()}


def test_train_step_exports_for_cuda_and_is_the_runs_step():
  config = _config(attention_impl='xla')
  exported = export_lib.export_train_step(config, platforms=('cuda', 'cpu'))
  assert exported.platforms == ('cuda', 'cpu')
  text = exported.mlir_module()
  assert 'optimization_barrier' not in text   # transformer.matmul's CPU weight gradient
  assert not {c for c in export_lib.custom_calls(exported) if 'callback' in c.lower()}

  # The same program, run here, is the step a run takes (cpu_matmul off, as exported).
  config.model.cpu_matmul = False
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  experiment = experiment_lib.build(experiment_lib.check_config(config, mesh=mesh))
  strategy = JitStrategy(mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn)
  batch = _random_batch(plan.abstract_batch(config, experiment.task, mesh, 1, 128), 128)
  state, metrics = strategy.train(experiment.init_state(experiment.rng), batch)
  leaves, exported_metrics = exported.call(
      jax.tree.leaves(experiment.init_state(experiment.rng)), batch)
  np.testing.assert_allclose(exported_metrics['loss'], metrics['loss'], rtol=1e-6)
  assert len(leaves) == len(jax.tree.leaves(state))
  for a, b in zip(leaves, jax.tree.leaves(state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_cpu_matmul_check_can_fail():
  # Asked for explicitly, the CPU matmul's barriers are in the program the test above reads.
  exported = export_lib.export_train_step(_config(attention_impl='xla', cpu_matmul=True))
  assert 'optimization_barrier' in exported.mlir_module()


@pytest.mark.parametrize('task,scan_layers', [('lm', False), ('lm', True),
                                              ('translation', False)])
def test_decode_step_exports_for_cuda_and_is_the_models_step(task, scan_layers):
  config = _config(task, attention_impl='xla', scan_layers=scan_layers)
  exported = export_lib.export_decode_step(config, batch_size=2, max_length=8,
                                           platforms=('cuda', 'cpu'))
  assert exported.platforms == ('cuda', 'cpu')
  logits_aval, cache_avals = exported.out_avals[0], exported.out_avals[1:]
  assert logits_aval.shape == (2, 1, 128)

  config.model.cpu_matmul = False
  experiment = experiment_lib.build(config)
  model = experiment.model
  params = experiment.init_state(experiment.rng).params
  prompt = jnp.asarray([[7, 8, 9], [10, 11, 12]], jnp.int32)
  args = ()
  if task == 'translation':
    sources = jnp.asarray([[5, 6, 7, 2, 0, 0, 0, 0], [9, 2, 0, 0, 0, 0, 0, 0]], jnp.int32)
    args = (model.apply({'params': params}, sources, method=model.decoder_memory),)
  decode = jax.jit(lambda tokens, cache: model.apply({'params': params}, tokens, cache, *args,
                                                     method=model.decode_step))
  _, cache = decode(prompt[:, :2], model.init_cache(2, 8))    # a prefilled cache
  expected, expected_cache = decode(prompt[:, 2:], cache)
  got, got_cache = exported.call(params, prompt[:, 2:], cache, *args)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert int(got_cache['index']) == int(expected_cache['index']) == 3
  assert [a.shape for a in cache_avals] == [a.shape for a in jax.tree.leaves(expected_cache)]
  for a, b in zip(jax.tree.leaves(got_cache), jax.tree.leaves(expected_cache)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_exported_steps_serialize_and_load():
  pytest.importorskip('flatbuffers', reason="jax.export's serialization: pip install -e "
                      "'.[gpu-export]'")
  config = _config(attention_impl='xla')
  for exported in (export_lib.export_train_step(config),
                   export_lib.export_decode_step(config, batch_size=2, max_length=8)):
    loaded = jax.export.deserialize(exported.serialize())   # what a GPU host reads
    assert loaded.platforms == ('cuda',) and loaded.in_avals == exported.in_avals


def _mask_types(exported) -> list[str]:
  """The mask of every forward cuDNN attention call, in program order."""
  return re.findall(r'custom_call @__cudnn\$fmhaSoftmax\(.*?mask_type\\22: \\22(\w+)',
                    exported.mlir_module())


def test_gpu_program_takes_cudnn_attention_with_our_padding_masks():
  """attention_impl='auto' (configs/lm1b_deep.py's) in a GPU program: unpacked rows'
  causal and end-of-row padding masks go to cuDNN's fused attention, forward and backward;
  packed rows' segment masks stay on the einsum path (cuDNN takes them only as a dense
  mask, jax-ml/jax#28974, or in jax's packed layout, which traces only on a Hopper GPU)."""
  require_cudnn()
  lm = export_lib.export_train_step(_config(attention_impl='auto', dtype='bfloat16'))
  assert set(export_lib.CUDNN_CALLS) <= export_lib.custom_calls(lm)
  if importlib.util.find_spec('flatbuffers'):
    jax.export.deserialize(lm.serialize())   # its cuDNN calls are allowed by name
  assert _mask_types(lm) == ['PADDING_CAUSAL']     # one (unrolled) layer's self-attention

  translation = export_lib.export_train_step(
      _config('translation', attention_impl='auto', dtype='bfloat16'))
  # The encoder's self-attention, the decoder's causal self-attention, cross-attention.
  assert sorted(_mask_types(translation)) == ['PADDING', 'PADDING', 'PADDING_CAUSAL']

  packed = export_lib.export_train_step(
      _config(attention_impl='auto', dtype='bfloat16', **{'data.pack': True}))
  assert not {c for c in export_lib.custom_calls(packed) if 'cudnn' in c}
  with pytest.raises(ValueError, match='takes causal and end-of-row padding'):
    export_lib.export_train_step(
        _config(attention_impl='cudnn', dtype='bfloat16', **{'data.pack': True}))


def test_without_cudnn_the_export_is_one_line_naming_the_extra(monkeypatch):
  monkeypatch.setattr(fused_attention_stablehlo, 'cuda_versions', None)
  with pytest.raises(UserError, match=r"CUDA plugin and cuDNN.*pip install -e '\.\[gpu-export\]'"):
    export_lib.export_train_step(_config(attention_impl='auto', dtype='bfloat16'))


def test_a_decoding_cache_past_the_models_positions_is_one_line():
  with pytest.raises(UserError, match='max_length=64: the model encodes max_len=16'):
    export_lib.export_decode_step(_config(attention_impl='xla'), batch_size=2, max_length=64)
