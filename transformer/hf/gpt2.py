"""GPT-2 (`GPT2LMHeadModel`, model_type 'gpt2') <-> `DecoderLM`.

Pre-LN with a final LayerNorm, learned positions, the tanh GELU ('gelu_new'), biases
everywhere, the output tied to the token embedding. Its attention is one `Conv1D` c_attn
whose weight is [in, out] = [D, 3D], query | key | value side by side; we split it.
"""

from __future__ import annotations

from transformer.config import ModelConfig
from transformer.hf import convert
from transformer.hf.convert import as_is, conv1d, fused, path
from transformer.models import DecoderLM

MODEL_TYPES = ('gpt2',)
ARCHITECTURE = 'GPT2LMHeadModel'
PREFIX = 'transformer.'
model_class = DecoderLM
# The causal-mask buffers older checkpoints saved.
IGNORED = (r'(transformer\.)?h\.\d+\.attn\.(masked_)?bias',)


def model_config(hf: dict, names: set[str]) -> ModelConfig:
  del names
  family = 'GPT-2'
  convert.require(hf, 'scale_attn_weights', [True], True, family)
  convert.require(hf, 'scale_attn_by_inverse_layer_idx', [False], False, family)
  convert.require(hf, 'add_cross_attention', [False], False, family)
  convert.require(hf, 'tie_word_embeddings', [True], True, family, ' (GPT-2 ties its output)')
  d = hf['n_embd']
  return ModelConfig(
      vocab_size=hf['vocab_size'], d_model=d, num_heads=hf['n_head'],
      mlp_dim=hf.get('n_inner') or 4 * d, num_layers=hf['n_layer'],
      max_len=hf.get('n_positions', hf.get('n_ctx', 1024)),
      dropout_rate=hf.get('resid_pdrop', 0.1), attention_dropout_rate=hf.get('attn_pdrop', 0.1),
      activation=convert.activation(hf.get('activation_function', 'gelu_new'), family),
      norm='layernorm', norm_epsilon=hf.get('layer_norm_epsilon', 1e-5), pre_norm=True,
      position='learned', use_bias=True, tie_output=True, scale_embeddings=False,
      pad_id=_pad_id(hf))


def _pad_id(hf: dict) -> int:
  pad = convert.token_id(hf, 'pad_token_id', hf['vocab_size'])
  return -1 if pad is None else pad


def hf_config(cfg: ModelConfig) -> dict:
  convert.check_representable(
      cfg, 'GPT-2', norm='layernorm', pre_norm=True, position='learned', use_bias=True,
      resolved_qkv_bias=True, tie_output=True, resolved_logits_bias=False, scale_embeddings=False,
      resolved_num_kv_heads=cfg.num_heads, resolved_head_dim=cfg.d_model // cfg.num_heads,
      embedding_norm=False)
  return {
      'architectures': [ARCHITECTURE], 'model_type': 'gpt2', 'vocab_size': cfg.vocab_size,
      'n_embd': cfg.d_model, 'n_head': cfg.num_heads, 'n_layer': cfg.num_layers,
      'n_inner': cfg.mlp_dim, 'n_positions': cfg.max_len,
      'activation_function': convert.hf_activation(cfg.activation, 'GPT-2'),
      'layer_norm_epsilon': cfg.norm_epsilon, 'resid_pdrop': cfg.dropout_rate,
      'embd_pdrop': cfg.dropout_rate, 'attn_pdrop': cfg.attention_dropout_rate,
      'pad_token_id': cfg.pad_id if cfg.pad_id >= 0 else None,
      'bos_token_id': None, 'eos_token_id': None, 'tie_word_embeddings': True,
  }


def tensors(cfg: ModelConfig) -> list[convert.Tensor]:
  d, n, h, f = cfg.d_model, cfg.num_heads, cfg.resolved_head_dim, cfg.mlp_dim
  table = [as_is('transformer.wte.weight', path('embedding/embedding'), (cfg.vocab_size, d)),
           as_is('transformer.wpe.weight', path('decoder/embedder/position_embedding/embedding'),
                 (cfg.max_len, d))]
  for i in range(cfg.num_layers):
    hf, ours = f'transformer.h.{i}', path(f'decoder/layer_{i}')
    attn = ours + ('self_attention',)
    table += convert.norm(f'{hf}.ln_1', ours + path('self_attention_block/norm'), d)
    table += [
        fused(f'{hf}.attn.c_attn.weight', [attn + (r, 'kernel') for r in ('query', 'key', 'value')],
              lead=(d,), parts=(d, d, d), our_shape=(d, n, h)),
        fused(f'{hf}.attn.c_attn.bias', [attn + (r, 'bias') for r in ('query', 'key', 'value')],
              lead=(), parts=(d, d, d), our_shape=(n, h)),
        conv1d(f'{hf}.attn.c_proj.weight', attn + ('out', 'kernel'), (n, h), (d,)),
        as_is(f'{hf}.attn.c_proj.bias', attn + ('out', 'bias'), (d,)),
    ]
    table += convert.norm(f'{hf}.ln_2', ours + path('mlp_block/norm'), d)
    table += [conv1d(f'{hf}.mlp.c_fc.weight', ours + path('mlp/wi/kernel'), (d,), (f,)),
              as_is(f'{hf}.mlp.c_fc.bias', ours + path('mlp/wi/bias'), (f,)),
              conv1d(f'{hf}.mlp.c_proj.weight', ours + path('mlp/wo/kernel'), (f,), (d,)),
              as_is(f'{hf}.mlp.c_proj.bias', ours + path('mlp/wo/bias'), (d,))]
  table += convert.norm('transformer.ln_f', path('decoder/final_norm'), d)
  return table


def tied(cfg: ModelConfig) -> list[convert.Tied]:
  del cfg
  return [convert.Tied('lm_head.weight', lambda read: read('transformer.wte.weight'))]
