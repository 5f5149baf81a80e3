"""Hugging Face checkpoints in and out: GPT-2, BERT, Llama-style (Llama, Mistral, Qwen2)
and Marian (Opus-MT), without torch.

    model, variables = transformer.hf.load('path/to/hf-folder')   # config.json + *.safetensors
    model, variables = transformer.hf.load('ORG/NAME')            # a Hub id (huggingface_hub)
    logits = model.apply(variables, input_ids)                     # DecoderLM
    out = model.apply(variables, input_ids, token_type_ids=...)   # EncoderModel: its dict
    logits = model.apply(variables, input_ids, decoder_input_ids)  # Transformer (Marian)
    transformer.hf.save(model, variables, 'path/to/out')          # from_pretrained loads it

`load` reads config.json into a `ModelConfig` (refusing, in one line, an architecture or an
option our models cannot express) and the safetensors tensors into our parameter tree
(naming any tensor that is missing, mis-shaped or unknown); `model` is the linen module
(`DecoderLM`, `EncoderModel` or `Transformer`) and `variables` is {'params': ...} in
float32. `save` writes config.json and model.safetensors (float32) in Hugging Face's names
and layouts; token ids other than pad are not part of a `ModelConfig`, so copy the
tokenizer files and bos/eos ids from the original folder if you need them.

Which family: GPT2LMHeadModel -> DecoderLM; BertForPreTraining / BertForMaskedLM ->
EncoderModel; LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM -> DecoderLM;
MarianMTModel -> Transformer. `python -m transformer import --hf DIR --workdir RUN` turns
a folder (or a Hub id, `--hf ORG/NAME[@REVISION]`) into a run folder for `translate`, `generate`, `evaluate` and fine-tuning (see
`transformer.hf.run_folder`).
"""

from __future__ import annotations

import json
import pathlib
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from transformer import models
from transformer.errors import ConfigError
from transformer.hf import bert, convert, gpt2, hub, llama, marian

FAMILIES: tuple[ModuleType, ...] = (gpt2, bert, llama, marian)
# Architectures people will try, and what keeps each out.
_WHY_NOT = {
    't5': 'T5 relative position bias',
    'mt5': 'T5 relative position bias',
    'bloom': 'ALiBi positions',
    'mpt': 'ALiBi positions',
    'falcon': 'ALiBi or parallel attention',
    'gpt_neox': 'partial rotary, parallel residual',
    'bart': "BART's learned positions with offset 2",
    'roberta': 'positions offset past the pad id',
    'gemma': 'RMSNorm scaled by 1 + weight',
}


def _family(hf: dict[str, Any], folder: pathlib.Path) -> ModuleType:
  model_type = hf.get('model_type')
  for family in FAMILIES:
    if model_type in family.MODEL_TYPES:
      return family
  architecture = ', '.join(hf.get('architectures') or []) or 'an unnamed architecture'
  why = f' ({_WHY_NOT[model_type]})' if model_type in _WHY_NOT else ''
  raise ConfigError(f'{folder}: {architecture} (model_type {model_type!r}) is not '
                    f'supported{why}; supported: GPT-2, BERT, Llama, Mistral, Qwen2, Marian')


def _family_of_model(model: nn.Module) -> ModuleType:
  if isinstance(model, models.Transformer):
    return marian
  if isinstance(model, models.EncoderModel):
    return bert
  if isinstance(model, models.DecoderLM):
    position = model.config.position
    if position in ('learned', 'rope'):
      return gpt2 if position == 'learned' else llama
    raise ConfigError(f"a DecoderLM with position={position!r} has no Hugging Face "
                      "equivalent here (GPT-2 has 'learned', Llama 'rope')")
  raise ConfigError(f'{type(model).__name__} is not one of our models')


def _check_tree(model: nn.Module, flat: dict[tuple[str, ...], np.ndarray]) -> None:
  """The converted tree has exactly the model's parameters and shapes (a converter bug
  otherwise)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *models.example_inputs(model))
  expected = traverse_util.flatten_dict(nn.meta.unbox(shapes)['params'])
  got = {k: tuple(v.shape) for k, v in flat.items()}
  want = {k: tuple(v.shape) for k, v in expected.items()}
  if got != want:
    differ = sorted('/'.join(k) for k in set(got) ^ set(want)) or sorted(
        '/'.join(k) for k in got if got[k] != want[k])
    raise AssertionError(f'converted parameters differ from the model\'s: {differ[:6]}')


def load(folder: str | pathlib.Path) -> tuple[nn.Module, dict[str, Any]]:
  """(model, variables) from a Hugging Face model folder or Hub id ('ORG/NAME[@REVISION]',
  through huggingface_hub's cache: `transformer.hf.hub`); see the module docstring."""
  folder = hub.resolve(folder)
  hf = convert.read_config(folder)
  family = _family(hf, folder)
  tensors = convert.TensorFile(folder, getattr(family, 'rename', lambda name: name))
  try:
    cfg = family.model_config(hf, tensors.names())
  except KeyError as missing:
    raise ConfigError(f'{folder}/config.json has no {missing}, which '
                      f'{hf.get("model_type")} needs') from None
  except ValueError as error:    # ModelConfig's own checks
    if isinstance(error, ConfigError):
      raise
    raise ConfigError(f'{folder}/config.json: {error}') from None
  model = family.model_class(cfg)
  flat = convert.read_params(tensors, family.tensors(cfg), family.tied(cfg), family.PREFIX,
                             family.IGNORED, np.dtype(cfg.param_dtype))
  _check_tree(model, flat)
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})
  return model, {'params': params}


def save(model: nn.Module, variables: Any, folder: str | pathlib.Path) -> None:
  """Writes `folder`/config.json and model.safetensors, which Hugging Face's
  `from_pretrained` loads; refuses, in one line, a model the family cannot express."""
  from safetensors.numpy import save_file
  folder = pathlib.Path(folder)
  model, variables = models.unscanned(model, variables)
  family = _family_of_model(model)
  config = family.hf_config(model.config)
  params = nn.meta.unbox(variables.get('params', variables))
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
  tensors = convert.write_tensors(flat, family.tensors(model.config))
  if (folder / convert.INDEX_FILE).exists():
    raise ConfigError(f'{folder} holds a sharded checkpoint ({convert.INDEX_FILE}): save '
                      'into another folder')
  folder.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(folder / convert.WEIGHTS_FILE), metadata={'format': 'pt'})
  (folder / convert.CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
