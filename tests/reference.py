"""An independent float64 NumPy Transformer, written from the papers' formulas.

It reads a parameter tree of ours (the names are the only thing it shares with the
package: no function of `transformer` is called) and computes the three families'
outputs for unpadded token rows, so that every architectural option can be checked
against it: post-LN and pre-LN residual blocks, LayerNorm and RMSNorm, ReLU / GELU
(tanh and exact) / SwiGLU feed-forward, multi-head, grouped-query and multi-query
attention, any head width, biases on or off (and on the query/key/value projections
alone), sinusoidal (interleaved or split channels) / learned / rotary positions with any
base, token-type embeddings and a norm after the embeddings, embedding scaling, tied and
untied outputs with or without a logits bias, any norm epsilon.
"""

from __future__ import annotations

import math

import numpy as np

def f64(tree):
  if isinstance(tree, dict):
    return {k: f64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def rms_norm(x, p, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * p['scale']


def norm(x, p, cfg):
  norm_fn = rms_norm if cfg.norm == 'rmsnorm' else layer_norm
  return norm_fn(x, p, cfg.norm_epsilon)


_erf = np.vectorize(math.erf)


def activation(x, name):
  if name == 'relu':
    return np.maximum(x, 0)
  if name == 'gelu':      # the tanh approximation (GPT-2, BERT's original code)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
  if name == 'gelu_exact':
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
  if name == 'silu':
    return x / (1 + np.exp(-x))
  raise ValueError(name)


def dense(x, p, contract: int = 1):
  """x [..., in dims] @ kernel [in dims, out dims] + bias."""
  kernel = p['kernel']
  out = np.tensordot(x, kernel, axes=contract)
  return out + p['bias'] if 'bias' in p else out


def feed_forward(x, p, cfg):
  hidden = dense(x, p['wi'])
  if cfg.activation == 'swiglu':
    hidden = activation(dense(x, p['gate']), 'silu') * hidden
  else:
    hidden = activation(hidden, cfg.activation)
  return dense(hidden, p['wo'])


def sinusoid_table(length, d, layout='interleaved'):
  """Interleaved: sin and cos of the pair's angle side by side (channels i, i + 1);
  split (Marian): the sines in the first ceil(d / 2) channels, the cosines after them."""
  table = np.zeros((length, d))
  sines = (d + 1) // 2
  for pos in range(length):
    for i in range(0, d, 2):
      angle = pos / 10000 ** (i / d)
      if layout == 'interleaved':
        sin_channel, cos_channel = i, i + 1
      else:
        sin_channel, cos_channel = i // 2, sines + i // 2
      table[pos, sin_channel] = math.sin(angle)
      if i + 1 < d:
        table[pos, cos_channel] = math.cos(angle)
  return table


def rotate(x, positions, base=10000.0):
  """RoPE on [T, N, H]: channel pairs (i, i + H/2) rotated by pos * base^(-2i/H)."""
  h = x.shape[-1]
  half = h // 2
  out = np.empty_like(x)
  for t, pos in enumerate(positions):
    for i in range(half):
      angle = pos * base ** (-2 * i / h)
      c, s = math.cos(angle), math.sin(angle)
      a, b = x[t, :, i], x[t, :, i + half]
      out[t, :, i] = a * c - b * s
      out[t, :, i + half] = b * c + a * s
  return out


def attention(x_q, x_kv, p, cfg, *, causal: bool, rope: bool):
  """One row: x_q [T, D], x_kv [S, D] -> [T, D]."""
  q, k, v = dense(x_q, p['query']), dense(x_kv, p['key']), dense(x_kv, p['value'])  # [T,N,H]
  if rope:
    base = cfg.rope_max_wavelength
    q, k = rotate(q, range(len(x_q)), base), rotate(k, range(len(x_kv)), base)
  n, kv_heads, h = q.shape[1], k.shape[1], q.shape[2]
  out = np.zeros_like(q)
  for head in range(n):
    kv = head // (n // kv_heads)         # query heads share key/value heads in groups
    scores = q[:, head] @ k[:, kv].T / math.sqrt(h)
    if causal:
      scores = np.where(np.tril(np.ones(scores.shape, bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out[:, head] = weights @ v[:, kv]
  return dense(out, p['out'], contract=2)


def residual(x, sublayer, p_norm, cfg):
  if cfg.pre_norm:
    return x + sublayer(norm(x, p_norm, cfg))
  return norm(x + sublayer(x), p_norm, cfg)


def embed(tokens, table, p_embedder, cfg, token_types=None):
  x = table[tokens]
  if cfg.scale_embeddings:
    x = x * math.sqrt(cfg.d_model)
  if cfg.position == 'sinusoidal':
    x = x + sinusoid_table(len(tokens), cfg.d_model, cfg.sinusoid_layout)
  elif cfg.position == 'learned':
    x = x + p_embedder['position_embedding']['embedding'][:len(tokens)]
  if cfg.num_token_types:
    types = np.zeros(len(tokens), int) if token_types is None else token_types
    x = x + p_embedder['token_type_embedding']['embedding'][types]
  if cfg.embedding_norm:
    x = norm(x, p_embedder['embedding_norm'], cfg)
  return x


def encoder(tokens, table, p, cfg, token_types=None):
  x = embed(tokens, table, p.get('embedder', {}), cfg, token_types)
  rope = cfg.position == 'rope'
  for i in range(cfg.num_layers):
    layer = p[f'layer_{i}']
    x = residual(x, lambda h: attention(h, h, layer['self_attention'], cfg, causal=False,
                                        rope=rope),
                 layer['self_attention_block']['norm'], cfg)
    x = residual(x, lambda h: feed_forward(h, layer['mlp'], cfg), layer['mlp_block']['norm'],
                 cfg)
  return norm(x, p['final_norm'], cfg) if cfg.pre_norm else x


def decoder(tokens, table, p, cfg, num_layers, encoded=None):
  x = embed(tokens, table, p.get('embedder', {}), cfg)
  rope = cfg.position == 'rope'
  for i in range(num_layers):
    layer = p[f'layer_{i}']
    x = residual(x, lambda h: attention(h, h, layer['self_attention'], cfg, causal=True,
                                        rope=rope),
                 layer['self_attention_block']['norm'], cfg)
    if encoded is not None:
      x = residual(x, lambda h: attention(h, encoded, layer['cross_attention'], cfg,
                                          causal=False, rope=False),
                   layer['cross_attention_block']['norm'], cfg)
    x = residual(x, lambda h: feed_forward(h, layer['mlp'], cfg), layer['mlp_block']['norm'],
                 cfg)
  if cfg.pre_norm:
    x = norm(x, p['final_norm'], cfg)
  if cfg.tie_output:
    return x @ table.T + (p['logits_bias'] if cfg.logits_bias else 0)
  return dense(x, p['output_projection'])


def transformer_logits(params, cfg, src, tgt):
  """[B, T, V] of the encoder-decoder on unpadded rows."""
  params = f64(params)
  source_table = params['source_embedding']['embedding']
  target_table = (source_table if cfg.share_embeddings
                  else params['target_embedding']['embedding'])
  num_decoder_layers = cfg.num_decoder_layers or cfg.num_layers
  out = []
  for s, t in zip(np.asarray(src), np.asarray(tgt)):
    encoded = encoder(s, source_table, params['encoder'], cfg)
    out.append(decoder(t, target_table, params['decoder'], cfg, num_decoder_layers, encoded))
  return np.stack(out)


def lm_logits(params, cfg, tokens):
  params = f64(params)
  table = params['embedding']['embedding']
  return np.stack([decoder(t, table, params['decoder'], cfg, cfg.num_layers)
                   for t in np.asarray(tokens)])


def encoder_model_outputs(params, cfg, tokens, token_types=None):
  """{'mlm_logits': [B, T, V], 'class_logits': [B, C]} of the encoder-only model. Its MLM
  head's GELU is exact for a model whose activation is, else the tanh form."""
  params = f64(params)
  table = params['embedding']['embedding']
  head_activation = 'gelu_exact' if cfg.activation == 'gelu_exact' else 'gelu'
  mlm, classes = [], []
  types = [None] * len(tokens) if token_types is None else np.asarray(token_types)
  for t, tt in zip(np.asarray(tokens), types):
    x = encoder(t, table, params['encoder'], cfg, tt)
    h = norm(activation(dense(x, params['mlm_transform']), head_activation), params['mlm_norm'],
             cfg)
    mlm.append(h @ table.T + params['mlm_bias'])
    if cfg.num_classes:
      pooled = np.tanh(dense(x[0], params['pooler']))
      classes.append(dense(pooled, params['classifier']))
  out = {'mlm_logits': np.stack(mlm)}
  if cfg.num_classes:
    out['class_logits'] = np.stack(classes)
  return out
