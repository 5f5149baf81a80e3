"""Llama-style decoders (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`)
<-> `DecoderLM`.

Pre-norm RMSNorm, RoPE, SwiGLU (gate_proj, up_proj, down_proj), grouped-query attention,
no biases (Qwen2: query/key/value biases; Llama's attention_bias with mlp_bias: all), an
untied output layer unless tie_word_embeddings. Hugging Face stores q_proj and k_proj with
each head's channels already ordered for its rotate_half RoPE, which rotates pairs
(i, i + H/2) as `transformer.positional.apply_rope` does: the weights load as they are.

A sliding attention window (Mistral, Qwen2's use_sliding_window) that is shorter than
max_position_embeddings becomes the model's max_len, so that it never bites. Saving
writes Llama (or Qwen2, for its bias layout): Mistral within its window is the same
computation.
"""

from __future__ import annotations

from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.hf import convert
from transformer.hf.convert import as_is, path
from transformer.models import DecoderLM

MODEL_TYPES = ('llama', 'mistral', 'qwen2')
PREFIX = 'model.'
model_class = DecoderLM
IGNORED = (r'(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq',)


def _rope_theta(hf: dict, family: str) -> float:
  """rope_theta, from transformers 5's rope_parameters or the older fields; any scaling
  (linear, dynamic, YaRN, Llama 3's) is refused."""
  parameters = hf.get('rope_parameters') or {}
  scaling = hf.get('rope_scaling') or {}
  kind = parameters.get('rope_type', scaling.get('rope_type', scaling.get('type', 'default')))
  if kind != 'default':
    raise ConfigError(f'{family}: RoPE scaling {kind!r} is not supported (plain RoPE only)')
  if hf.get('partial_rotary_factor', 1.0) != 1.0:
    raise ConfigError(f'{family}: partial_rotary_factor={hf["partial_rotary_factor"]} is not '
                      'supported (RoPE over whole heads only)')
  return float(parameters.get('rope_theta', hf.get('rope_theta', 10_000.0)))


def _max_len(hf: dict, model_type: str) -> int:
  max_len = hf.get('max_position_embeddings', 2048)
  window = hf.get('sliding_window')
  sliding = (model_type == 'mistral' or hf.get('use_sliding_window', False)
             or 'sliding_attention' in (hf.get('layer_types') or []))
  if sliding and window:
    max_len = min(max_len, window)
  return max_len


def model_config(hf: dict, names: set[str]) -> ModelConfig:
  del names
  model_type = hf['model_type']
  family = {'llama': 'Llama', 'mistral': 'Mistral', 'qwen2': 'Qwen2'}[model_type]
  convert.require(hf, 'hidden_act', ['silu'], 'silu', family, ' (SwiGLU with SiLU only)')
  if model_type == 'qwen2':
    use_bias, qkv_bias = False, True
  else:
    attention_bias = bool(hf.get('attention_bias', False))
    if attention_bias != bool(hf.get('mlp_bias', False)):
      raise ConfigError(f'{family}: attention_bias={attention_bias} with '
                        f'mlp_bias={hf.get("mlp_bias", False)} is not supported (both or '
                        'neither)')
    use_bias, qkv_bias = attention_bias, None
  heads, d = hf['num_attention_heads'], hf['hidden_size']
  kv_heads = hf.get('num_key_value_heads') or heads
  head_dim = hf.get('head_dim') or d // heads
  return ModelConfig(   # (None where our default means the same)
      vocab_size=hf['vocab_size'], d_model=d, num_heads=heads,
      num_kv_heads=None if kv_heads == heads else kv_heads,
      head_dim=None if head_dim * heads == d else head_dim,
      mlp_dim=hf['intermediate_size'], num_layers=hf['num_hidden_layers'],
      max_len=_max_len(hf, model_type), dropout_rate=0.0,
      attention_dropout_rate=hf.get('attention_dropout', 0.0), activation='swiglu',
      norm='rmsnorm', norm_epsilon=hf.get('rms_norm_eps', 1e-6), pre_norm=True,
      position='rope', rope_max_wavelength=_rope_theta(hf, family), use_bias=use_bias,
      qkv_bias=qkv_bias, tie_output=bool(hf.get('tie_word_embeddings', False)),
      logits_bias=False, scale_embeddings=False, pad_id=_pad_id(hf))


def _pad_id(hf: dict) -> int:
  pad = convert.token_id(hf, 'pad_token_id', hf['vocab_size'])
  return -1 if pad is None else pad


def hf_config(cfg: ModelConfig) -> dict:
  qwen2 = cfg.resolved_qkv_bias and not cfg.use_bias
  convert.check_representable(
      cfg, 'Qwen2' if qwen2 else 'Llama', norm='rmsnorm', pre_norm=True, position='rope',
      activation='swiglu', scale_embeddings=False, embedding_norm=False,
      resolved_logits_bias=False,
      resolved_qkv_bias=True if qwen2 else cfg.use_bias)
  config = {
      'architectures': ['Qwen2ForCausalLM' if qwen2 else 'LlamaForCausalLM'],
      'model_type': 'qwen2' if qwen2 else 'llama', 'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.d_model, 'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.resolved_num_kv_heads, 'head_dim': cfg.resolved_head_dim,
      'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
      'max_position_embeddings': cfg.max_len, 'hidden_act': 'silu',
      'rms_norm_eps': cfg.norm_epsilon, 'attention_dropout': cfg.attention_dropout_rate,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': cfg.rope_max_wavelength},
      'rope_theta': cfg.rope_max_wavelength, 'tie_word_embeddings': cfg.tie_output,
      'pad_token_id': cfg.pad_id if cfg.pad_id >= 0 else None,
      'bos_token_id': None, 'eos_token_id': None,
  }
  if qwen2:
    config['use_sliding_window'] = False
  else:
    config.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
  return config


def tensors(cfg: ModelConfig) -> list[convert.Tensor]:
  d, f = cfg.d_model, cfg.mlp_dim
  table = [as_is('model.embed_tokens.weight', path('embedding/embedding'), (cfg.vocab_size, d))]
  for i in range(cfg.num_layers):
    hf, ours = f'model.layers.{i}', path(f'decoder/layer_{i}')
    names = {'query': f'{hf}.self_attn.q_proj', 'key': f'{hf}.self_attn.k_proj',
             'value': f'{hf}.self_attn.v_proj', 'out': f'{hf}.self_attn.o_proj'}
    table += convert.norm(f'{hf}.input_layernorm', ours + path('self_attention_block/norm'),
                          d, bias=False)
    table += convert.attention(names, ours + ('self_attention',), cfg,
                               qkv_bias=cfg.resolved_qkv_bias, out_bias=cfg.use_bias)
    table += convert.norm(f'{hf}.post_attention_layernorm', ours + path('mlp_block/norm'), d,
                          bias=False)
    table += convert.dense(f'{hf}.mlp.gate_proj', ours + path('mlp/gate'), d, f, cfg.use_bias)
    table += convert.dense(f'{hf}.mlp.up_proj', ours + path('mlp/wi'), d, f, cfg.use_bias)
    table += convert.dense(f'{hf}.mlp.down_proj', ours + path('mlp/wo'), f, d, cfg.use_bias)
  table += convert.norm('model.norm', path('decoder/final_norm'), d, bias=False)
  if not cfg.tie_output:
    table += convert.dense('lm_head', path('decoder/output_projection'), d, cfg.vocab_size,
                           bias=False)
  return table


def tied(cfg: ModelConfig) -> list[convert.Tied]:
  if not cfg.tie_output:
    return []
  return [convert.Tied('lm_head.weight', lambda read: read('model.embed_tokens.weight'))]
