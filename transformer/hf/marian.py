"""Marian (`MarianMTModel`, model_type 'marian': the Opus-MT translation models) <->
`Transformer`.

The paper's base architecture, post-LN with LayerNorm epsilon 1e-5, sinusoidal positions
with sines in the first half of the channels and cosines in the second (`sinusoid_layout
='split'`), embeddings scaled by sqrt(d_model), SiLU ('swish') feed-forward layers, one
embedding shared by the encoder, the decoder and the output, plus a bias on the logits
(final_logits_bias). Decoding starts from the pad token, which the decoder reads as an
ordinary token (`mask_decoder_pad=False`); the source's pads are masked.
"""

from __future__ import annotations

import numpy as np

from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.hf import convert
from transformer.hf.convert import as_is, path, reshaped
from transformer.models import Transformer
from transformer.positional import sinusoidal_encoding

MODEL_TYPES = ('marian',)
PREFIX = 'model.'
model_class = Transformer
IGNORED = ()


def model_config(hf: dict, names: set[str]) -> ModelConfig:
  del names
  family = 'Marian'
  for key, wanted, default in (('normalize_before', False, False),
                               ('normalize_embedding', False, False),
                               ('add_final_layer_norm', False, False),
                               ('static_position_embeddings', True, True),
                               ('share_encoder_decoder_embeddings', True, True),
                               ('tie_word_embeddings', True, True)):
    convert.require(hf, key, [wanted], default, family)
  vocab = hf['vocab_size']
  convert.require(hf, 'decoder_vocab_size', [None, vocab], None, family,
                  ' (separate source and target vocabularies)')
  for encoder_key, decoder_key in (('encoder_attention_heads', 'decoder_attention_heads'),
                                   ('encoder_ffn_dim', 'decoder_ffn_dim')):
    if hf[encoder_key] != hf[decoder_key]:
      raise ConfigError(f'{family}: {encoder_key}={hf[encoder_key]} differs from '
                        f'{decoder_key}={hf[decoder_key]}, which our model shares')
  pad = convert.token_id(hf, 'pad_token_id', vocab)
  return ModelConfig(
      vocab_size=vocab, d_model=hf['d_model'], num_heads=hf['encoder_attention_heads'],
      mlp_dim=hf['encoder_ffn_dim'], num_layers=hf['encoder_layers'],
      num_decoder_layers=hf['decoder_layers'], max_len=hf.get('max_position_embeddings', 512),
      dropout_rate=hf.get('dropout', 0.1), attention_dropout_rate=hf.get('attention_dropout', 0.0),
      activation=convert.activation(hf.get('activation_function', 'swish'), family),
      norm='layernorm', norm_epsilon=1e-5, pre_norm=False, position='sinusoidal',
      sinusoid_layout='split', use_bias=True, share_embeddings=True, tie_output=True,
      logits_bias=True, scale_embeddings=bool(hf.get('scale_embedding', False)),
      mask_decoder_pad=False, pad_id=-1 if pad is None else pad)


def hf_config(cfg: ModelConfig) -> dict:
  convert.check_representable(
      cfg, 'Marian', norm='layernorm', norm_epsilon=1e-5, pre_norm=False,
      position='sinusoidal', sinusoid_layout='split', use_bias=True, resolved_qkv_bias=True,
      share_embeddings=True, tie_output=True, resolved_logits_bias=True,
      embedding_norm=False, mask_decoder_pad=False, resolved_num_kv_heads=cfg.num_heads,
      resolved_head_dim=cfg.d_model // cfg.num_heads)
  pad = cfg.pad_id if cfg.pad_id >= 0 else None
  layers = cfg.resolved_num_decoder_layers
  return {
      'architectures': ['MarianMTModel'], 'model_type': 'marian',
      'vocab_size': cfg.vocab_size, 'decoder_vocab_size': cfg.vocab_size,
      'd_model': cfg.d_model, 'encoder_layers': cfg.num_layers, 'decoder_layers': layers,
      'encoder_attention_heads': cfg.num_heads, 'decoder_attention_heads': cfg.num_heads,
      'encoder_ffn_dim': cfg.mlp_dim, 'decoder_ffn_dim': cfg.mlp_dim,
      'max_position_embeddings': cfg.max_len,
      'activation_function': convert.hf_activation(cfg.activation, 'Marian', 'swish'),
      'scale_embedding': cfg.scale_embeddings, 'dropout': cfg.dropout_rate,
      'attention_dropout': cfg.attention_dropout_rate, 'activation_dropout': 0.0,
      'share_encoder_decoder_embeddings': True, 'tie_word_embeddings': True,
      'is_encoder_decoder': True, 'pad_token_id': pad, 'decoder_start_token_id': pad,
      'eos_token_id': None, 'forced_eos_token_id': None,
  }


def _layer(hf: str, ours: tuple, cfg: ModelConfig, cross: bool) -> list[convert.Tensor]:
  d, f = cfg.d_model, cfg.mlp_dim
  blocks = [('self_attn', 'self_attention')] + ([('encoder_attn', 'cross_attention')]
                                                if cross else [])
  table = []
  for theirs, mine in blocks:
    names = {'query': f'{hf}.{theirs}.q_proj', 'key': f'{hf}.{theirs}.k_proj',
             'value': f'{hf}.{theirs}.v_proj', 'out': f'{hf}.{theirs}.out_proj'}
    table += convert.attention(names, ours + (mine,), cfg, qkv_bias=True, out_bias=True)
    table += convert.norm(f'{hf}.{theirs}_layer_norm', ours + (f'{mine}_block', 'norm'), d)
  table += convert.dense(f'{hf}.fc1', ours + path('mlp/wi'), d, f)
  table += convert.dense(f'{hf}.fc2', ours + path('mlp/wo'), f, d)
  table += convert.norm(f'{hf}.final_layer_norm', ours + path('mlp_block/norm'), d)
  return table


def tensors(cfg: ModelConfig) -> list[convert.Tensor]:
  table = [as_is('model.shared.weight', path('source_embedding/embedding'),
                 (cfg.vocab_size, cfg.d_model)),
           reshaped('final_logits_bias', path('decoder/logits_bias'), (1, cfg.vocab_size),
                    (cfg.vocab_size,))]
  for i in range(cfg.num_layers):
    table += _layer(f'model.encoder.layers.{i}', path(f'encoder/layer_{i}'), cfg, cross=False)
  for i in range(cfg.resolved_num_decoder_layers):
    table += _layer(f'model.decoder.layers.{i}', path(f'decoder/layer_{i}'), cfg, cross=True)
  return table


def tied(cfg: ModelConfig) -> list[convert.Tied]:
  """Older checkpoints also store the shared embedding under three more names and the
  fixed sinusoid tables."""
  shared = lambda read: read('model.shared.weight')
  table = np.asarray(sinusoidal_encoding(cfg.max_len, cfg.d_model, layout='split'))
  return [convert.Tied(name, shared) for name in ('model.encoder.embed_tokens.weight',
                                                  'model.decoder.embed_tokens.weight',
                                                  'lm_head.weight')] + [
      convert.Tied(f'model.{side}.embed_positions.weight', lambda read: table, exact=False)
      for side in ('encoder', 'decoder')]
