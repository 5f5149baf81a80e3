"""The three Transformer families, built from `ModelConfig`.

- `Transformer`: the paper's encoder-decoder (translation), with `encode` and `decode`.
- `DecoderLM`: decoder-only, causal (language models).
- `EncoderModel`: encoder-only, with a masked-LM head and a sequence-classification head.

All are plain linen modules: `params = model.init(rng, ...)`, `model.apply(params, ...)`.
Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`) that
`transformer.sharding` maps onto a device mesh; `flax.linen.meta.unbox` strips them.

Positions default to each token's index among its row's non-pad tokens, which is
`arange(T)` for unpadded and right-padded rows and keeps left-padded prompts consistent.
Packed rows pass `positions` and `segment_ids` explicitly.

Decoding has its own call, `decode_step`, beside the training and scoring one:
`cache = model.init_cache(batch_size, max_length)`, then
`logits, cache = model.apply(params, tokens, cache, method=model.decode_step)` for a
prompt (prefill, any length) and then one token at a time. The cache is a plain pytree:
the next slot to write (`index`), which slots hold real tokens (`valid` [B, S_max]), and
every layer's keys [B, K, H, S_max] and values [B, K, S_max, H] (`key`, `value`). A model
with scanned layers keeps them stacked on a leading layers axis ([L, B, K, H, S_max]) and
decodes by scanning over them; an unrolled one keeps one array per layer (a tuple), which
its step writes and reads in place (a layer's slice of a stacked array is copied at every
step: beam search ran 1.5x slower so). Axes are counted from the end, so code that pads
or repeats a cache serves both. The encoder-decoder's step also takes the source as every
decoder layer's cross-attention keys and values (laid out likewise), computed once
(`memory = model.apply(params, inputs, method=model.decoder_memory)`). Beam search adds
`cache['beam_slots']` [B, W, S_max] to a cache of B * W rows: beams then read their
history through it instead of the cache being reordered after every step
(`transformer.inference.beam_cache`).

Deep models: `scan_layers=True` runs each stack as one `nn.scan` over its layers, whose
parameters are stacked on a leading axis (logical name 'layers') under `layers` instead of
`layer_0`, `layer_1`, ...; compile time then no longer grows with depth. `scan_params` and
`unscan_params` convert parameter trees (and optimizer states) between the two layouts.
A scanned model decodes by scanning its layers over the stacked cache: one compiled layer
step whatever the depth. `remat_policy` chooses what each layer keeps for the backward
pass.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jaxtyping import Array, Float, Int

from transformer import attention as attn
from transformer import positional
from transformer.config import ModelConfig
from transformer.layers import (DecoderLayer, EncoderLayer, ScannedDecoderLayer,
                                ScannedEncoderLayer, activation_fn, make_norm)
from transformer.matmul import projection_dot_general

Cache = dict[str, Any]


def default_positions(tokens: Int[Array, "B T"], pad_id: int = 0,
                      offset: Int[Array, "B"] | None = None) -> Int[Array, "B T"]:
  """Index of each token among its row's real tokens (plus `offset` already cached)."""
  count = jnp.cumsum(tokens != pad_id, axis=-1) - 1
  if offset is not None:
    count = count + offset[:, None]
  return jnp.maximum(count, 0).astype(jnp.int32)


def example_inputs(model: nn.Module, length: int = 8) -> tuple[jax.Array, ...]:
  """Token ids that `model.init` can trace (only their shapes matter): the encoder-decoder
  takes source and target ids, the others one row of ids."""
  tokens = jnp.ones((1, min(length, model.config.max_len)), jnp.int32)
  return (tokens, tokens) if isinstance(model, Transformer) else (tokens,)


def init_cache(config: ModelConfig, num_layers: int, batch_size: int, max_length: int,
               dtype: Any = None) -> Cache:
  """An empty decoding cache: every layer's keys and values (stacked on a leading layers
  axis when `config.scan_layers`, else a tuple of one array per layer), which slots hold
  real tokens, and the next slot to write."""
  k = config.resolved_num_kv_heads
  h = config.resolved_head_dim
  dtype = config.compute_dtype if dtype is None else dtype
  # Head-major: the layouts the attention products read in place (see MultiHeadAttention).
  key_shape, value_shape = (batch_size, k, h, max_length), (batch_size, k, max_length, h)
  if config.scan_layers:
    key = jnp.zeros((num_layers, *key_shape), dtype)
    value = jnp.zeros((num_layers, *value_shape), dtype)
  else:
    key = tuple(jnp.zeros(key_shape, dtype) for _ in range(num_layers))
    value = tuple(jnp.zeros(value_shape, dtype) for _ in range(num_layers))
  return {'index': jnp.zeros((), jnp.int32),
          'valid': jnp.zeros((batch_size, max_length), jnp.bool_),
          'key': key, 'value': value}


def grow_cache(cache: Cache, max_length: int) -> Cache:
  """The same cache with room for `max_length` tokens (empty slots added at the end)."""
  def pad(axis):
    def pad_array(x):
      widths = [(0, 0)] * x.ndim
      widths[axis] = (0, max_length - x.shape[axis])
      return jnp.pad(x, widths)
    return lambda tree: jax.tree.map(pad_array, tree)
  grown = {**cache, 'valid': pad(1)(cache['valid']), 'key': pad(-1)(cache['key']),
           'value': pad(-2)(cache['value'])}
  if 'beam_slots' in cache:
    grown['beam_slots'] = pad(2)(cache['beam_slots'])
  return grown


def _embedding(config: ModelConfig, vocab_size: int | None, name: str) -> nn.Embed:
  if vocab_size is None:
    raise ValueError('ModelConfig.vocab_size is None: set it (training fills it in from the '
                     'tokenizer)')
  # N(0, d^-1/2) so that, after the sqrt(d) scaling, embeddings have unit variance.
  return nn.Embed(vocab_size, config.d_model, dtype=config.compute_dtype,
                  param_dtype=config.storage_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(
                      nn.initializers.normal(stddev=config.d_model ** -0.5), ('vocab', 'embed')))


class _Embedder(nn.Module):
  """Token embedding * sqrt(d_model) + positional encoding, then dropout (paper 3.4, 3.5).

  BERT's options: token-type embeddings added too (`num_token_types`), and a norm of the
  sum before the dropout (`embedding_norm`).
  """
  config: ModelConfig
  embedding: nn.Embed

  @nn.compact
  def __call__(self, tokens: Int[Array, "B T"], positions: Int[Array, "B T"],
               deterministic: bool, token_type_ids: Int[Array, "B T"] | None = None
               ) -> Float[Array, "B T D"]:
    cfg = self.config
    if cfg.position != 'rope' and positions.shape[-1] > cfg.max_len:
      # Out-of-range table rows would be NaN, and NaN leaks through masked attention.
      raise ValueError(f'{positions.shape[-1]} positions but the model encodes only '
                       f'max_len={cfg.max_len}')
    x = self.embedding(tokens)
    if cfg.scale_embeddings:
      x = x * jnp.sqrt(cfg.d_model).astype(x.dtype)
    if cfg.position == 'sinusoidal':
      table = positional.sinusoidal_encoding(cfg.max_len, cfg.d_model,
                                             layout=cfg.sinusoid_layout)
      x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
    elif cfg.position == 'learned':
      x = x + positional.LearnedPositionalEmbedding(
          cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype,
          name='position_embedding')(positions)
    # 'rope' rotates queries and keys inside attention instead.
    if cfg.num_token_types:
      types = jnp.zeros_like(tokens) if token_type_ids is None else token_type_ids
      x = x + nn.Embed(cfg.num_token_types, cfg.d_model, dtype=cfg.compute_dtype,
                       param_dtype=cfg.storage_dtype, name='token_type_embedding',
                       embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(stddev=0.02), (None, 'embed')))(types)
    if cfg.embedding_norm:
      x = make_norm(cfg, 'embedding_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


_REMAT_POLICIES = {
    'full': None,   # nothing saveable: recompute the whole layer
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_attention_out': jax.checkpoint_policies.save_only_these_names('attention_out'),
}


def _layer_stack(layer: type[nn.Module], scanned: type[nn.Module], config: ModelConfig,
                 num_layers: int, **layer_fields):
  """The stack's layers: a list of `layer_{i}` modules, or one `layers` module that scans
  `scanned` (the same layer in scan's carry form) over stacked parameters."""
  cls = scanned if config.scan_layers else layer
  if config.remat_policy != 'none':
    # Argument 4 (counting self) is `deterministic`, a Python bool.
    cls = nn.remat(cls, policy=_REMAT_POLICIES[config.remat_policy], static_argnums=(4,),
                   prevent_cse=not config.scan_layers)   # scan already keeps them apart
  if not config.scan_layers:
    return [cls(config, name=f'layer_{i}', **layer_fields) for i in range(num_layers)]
  scan = lambda in_axes: dict(
      variable_axes={'params': 0, 'intermediates': 0},
      split_rngs={'params': True, 'dropout': True},   # each layer its own
      in_axes=in_axes, length=num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
  methods = {'__call__': scan(nn.broadcast)}
  if issubclass(layer, DecoderLayer):
    # A decoding step carries the stacked cache through the layers (written in place) and
    # reads each layer's slice of the stacked cross-attention memories.
    methods['decode_step'] = scan((0,) + (nn.broadcast,) * 5)
    methods['project_cross_memory'] = scan(nn.broadcast)
  return nn.scan(cls, methods=methods)(config, name='layers', **layer_fields)


def _run_stack(layers, x, *args):
  """x through the stack (a list of layers, or one scanned module)."""
  if isinstance(layers, (list, tuple)):
    for layer in layers:
      x = layer(x, *args)
    return x
  x, _ = layers(x, *args)
  return x


class Encoder(nn.Module):
  """Embeddings and a stack of `EncoderLayer`s: [B, S] tokens -> [B, S, D]."""
  config: ModelConfig
  embedding: nn.Embed

  def setup(self):
    cfg = self.config
    self.embedder = _Embedder(cfg, self.embedding)
    self.layers = _layer_stack(EncoderLayer, ScannedEncoderLayer, cfg, cfg.num_layers)
    if cfg.pre_norm:
      self.final_norm = make_norm(cfg, 'final_norm')

  def __call__(self, tokens: Int[Array, "B S"], positions: Int[Array, "B S"] | None = None,
               segment_ids: Int[Array, "B S"] | None = None,
               deterministic: bool = True,
               token_type_ids: Int[Array, "B S"] | None = None) -> Float[Array, "B S D"]:
    cfg = self.config
    if positions is None:
      positions = default_positions(tokens, cfg.pad_id)
    valid = tokens != cfg.pad_id
    mask = attn.padding_attention_mask(valid, valid)
    if segment_ids is not None:
      mask = mask & attn.make_segment_mask(segment_ids, segment_ids)
    x = self.embedder(tokens, positions, deterministic, token_type_ids)
    x = _run_stack(self.layers, x, mask, positions, deterministic)
    return self.final_norm(x) if cfg.pre_norm else x


class Decoder(nn.Module):
  """Embeddings, a stack of causal `DecoderLayer`s and the output projection to logits.

  Logits are float32 whatever the compute dtype. With `mask_decoder_pad=False` the pad id
  is an ordinary token here (Marian feeds it as the first decoder input); the source's pad
  tokens are still masked in cross-attention.
  """
  config: ModelConfig
  embedding: nn.Embed
  num_layers: int
  cross_attention: bool

  def setup(self):
    cfg = self.config
    self.embedder = _Embedder(cfg, self.embedding)
    self.layers = _layer_stack(DecoderLayer, ScannedDecoderLayer, cfg, self.num_layers,
                               with_cross_attention=self.cross_attention)
    if cfg.pre_norm:
      self.final_norm = make_norm(cfg, 'final_norm')
    if not cfg.tie_output:
      self.output_projection = nn.Dense(
          cfg.resolved_target_vocab_size, use_bias=cfg.logits_bias is not False,
          dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, name='output_projection',
          dot_general=projection_dot_general(cfg.cpu_matmul),
          kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                   ('embed', 'vocab')),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)))
    elif cfg.logits_bias:
      self.logits_bias = self.param(
          'logits_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
          (cfg.resolved_target_vocab_size,), cfg.storage_dtype)

  def _logits(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    cfg = self.config
    if cfg.pre_norm:
      x = self.final_norm(x)
    if cfg.tie_output:
      logits = self.embedding.attend(x)
      if cfg.logits_bias:
        logits = logits + self.logits_bias.astype(logits.dtype)
    else:
      logits = self.output_projection(x)
    return logits.astype(jnp.float32)

  def _pad_id(self) -> int:
    return self.config.pad_id if self.config.mask_decoder_pad else -1   # -1: none is pad

  def __call__(self, tokens: Int[Array, "B T"], positions: Int[Array, "B T"] | None = None,
               segment_ids: Int[Array, "B T"] | None = None,
               encoded: Float[Array, "B S D"] | None = None,
               encoder_tokens: Int[Array, "B S"] | None = None,
               encoder_segment_ids: Int[Array, "B S"] | None = None,
               deterministic: bool = True) -> Float[Array, "B T V"]:
    pad_id = self._pad_id()
    valid = tokens != pad_id
    cross_mask = None
    if self.cross_attention:
      # Every target position reads the real source tokens (padded queries too, so that
      # their outputs do not depend on the kernel).
      cross_mask = attn.padding_attention_mask(valid, encoder_tokens != self.config.pad_id,
                                               mask_queries=False)
      if segment_ids is not None:
        cross_mask = cross_mask & attn.make_segment_mask(segment_ids, encoder_segment_ids)
    if positions is None:
      positions = default_positions(tokens, pad_id)
    mask = attn.padding_attention_mask(valid, valid, causal=True, mask_queries=False)
    if segment_ids is not None:
      mask = mask & attn.make_segment_mask(segment_ids, segment_ids)
    x = self.embedder(tokens, positions, deterministic)
    x = _run_stack(self.layers, x, mask, positions, deterministic, encoded, cross_mask)
    return self._logits(x)

  def decode_step(self, tokens: Int[Array, "B T"], cache: Cache,
                  positions: Int[Array, "B T"] | None = None,
                  memory: dict[str, Array] | None = None
                  ) -> tuple[Float[Array, "B T V"], Cache]:
    """T new tokens' logits and the cache that holds them too (see the module docstring;
    `memory` from `Transformer.decoder_memory`, for the encoder-decoder)."""
    pad_id = self._pad_id()
    index = cache['index']
    valid = tokens != pad_id
    if positions is None:
      positions = default_positions(tokens, pad_id, offset=cache['valid'].sum(-1))
    key_valid = jax.lax.dynamic_update_slice(cache['valid'], valid, (0, index))
    mask = (attn.make_causal_mask(tokens.shape[1], key_valid.shape[1], offset=index)
            & key_valid[:, None, None, :])
    cross, cross_mask = None, None
    if self.cross_attention:
      if memory is None:
        raise ValueError('the encoder-decoder decodes with its memory: pass `memory` '
                         '(Transformer.decoder_memory)')
      cross = {'key': memory['key'], 'value': memory['value']}
      cross_mask = memory['valid'][:, None, None, :]   # [B, 1, 1, S]: a row's real tokens
    beam_slots = cache.get('beam_slots')
    if beam_slots is not None:
      # Each beam writes its new tokens in its own rows (see `MultiHeadAttention`).
      batch_size, width, _ = beam_slots.shape
      own = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32)[None, :, None],
                             (batch_size, width, tokens.shape[1]))
      beam_slots = jax.lax.dynamic_update_slice(beam_slots, own, (0, 0, index))

    x = self.embedder(tokens, positions, True)
    kv = {'key': cache['key'], 'value': cache['value']}
    if self.config.scan_layers:
      (x, kv, _), _ = self.layers.decode_step((x, kv, jnp.zeros((), jnp.int32)), cross, mask,
                                              positions, index, cross_mask, beam_slots)
    else:
      keys, values = [], []
      for i, layer in enumerate(self.layers):
        own = {'key': kv['key'][i], 'value': kv['value'][i]}
        layer_memory = None if cross is None else {k: v[i] for k, v in cross.items()}
        x, own = layer.decode_step(x, own, mask, positions, index, layer_memory, cross_mask,
                                   beam_slots)
        keys.append(own['key'])
        values.append(own['value'])
      kv = {'key': tuple(keys), 'value': tuple(values)}
    new_cache = {**cache, **kv, 'index': index + tokens.shape[1], 'valid': key_valid}
    if beam_slots is not None:
      new_cache['beam_slots'] = beam_slots
    return self._logits(x), new_cache

  def cross_memory(self, encoded: Float[Array, "B S D"]) -> dict[str, Any]:
    """Every layer's cross-attention keys [B, K, H, S] and values [B, K, S, H], in the
    cache's layout: stacked ([L, B, ...]) for scanned layers, else a tuple per layer."""
    if self.config.scan_layers:
      _, memory = self.layers.project_cross_memory(None, encoded)
      return memory
    memories = [layer.project_cross_memory(encoded) for layer in self.layers]
    return {k: tuple(m[k] for m in memories) for k in ('key', 'value')}


def _no_token_types(config: ModelConfig, family: str) -> None:
  if config.num_token_types:
    raise ValueError(f'num_token_types={config.num_token_types}: token types are for the '
                     f'EncoderModel, {family} takes none')


class Transformer(nn.Module):
  """The encoder-decoder of "Attention Is All You Need".

  `__call__(inputs, decoder_inputs)` is teacher forcing: `decoder_inputs` are the targets
  shifted right (starting with bos), and the logits predict the targets.
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    _no_token_types(cfg, 'Transformer')
    source_embedding = _embedding(cfg, cfg.vocab_size, 'source_embedding')
    if cfg.share_embeddings:
      target_embedding = source_embedding
    else:
      target_embedding = _embedding(cfg, cfg.resolved_target_vocab_size, 'target_embedding')
    self.encoder = Encoder(cfg, source_embedding)
    self.decoder = Decoder(cfg, target_embedding, cfg.resolved_num_decoder_layers,
                           cross_attention=True)

  def encode(self, inputs: Int[Array, "B S"], *, inputs_positions=None,
             inputs_segment_ids=None, deterministic: bool = True) -> Float[Array, "B S D"]:
    return self.encoder(inputs, inputs_positions, inputs_segment_ids, deterministic)

  def decode(self, encoded: Float[Array, "B S D"], inputs: Int[Array, "B S"],
             decoder_inputs: Int[Array, "B T"], *, decoder_positions=None,
             decoder_segment_ids=None, inputs_segment_ids=None,
             deterministic: bool = True) -> Float[Array, "B T V"]:
    """Teacher-forced logits [B, T, V] of the decoder over an encoded source."""
    return self.decoder(decoder_inputs, decoder_positions, decoder_segment_ids, encoded,
                        inputs, inputs_segment_ids, deterministic)

  def decoder_memory(self, inputs: Int[Array, "B S"]) -> dict[str, Array]:
    """The source as decoding reads it: encoded once, then every decoder layer's
    cross-attention keys [B, K, H, S] and values [B, K, S, H] in the cache's layout
    (`MultiHeadAttention.project_memory`, `Decoder.cross_memory`), and which source tokens
    are real (`valid` [B, S])."""
    memory = self.decoder.cross_memory(self.encode(inputs))
    return {**memory, 'valid': inputs != self.config.pad_id}

  def decode_step(self, decoder_inputs: Int[Array, "B T"], cache: Cache,
                  memory: dict[str, Array], *, decoder_positions=None
                  ) -> tuple[Float[Array, "B T V"], Cache]:
    """A cached decoding step (see the module docstring); `memory` from `decoder_memory`,
    of B rows, or of B / W rows read by W beams each."""
    return self.decoder.decode_step(decoder_inputs, cache, decoder_positions, memory)

  def __call__(self, inputs: Int[Array, "B S"], decoder_inputs: Int[Array, "B T"], *,
               inputs_positions=None, inputs_segment_ids=None, decoder_positions=None,
               decoder_segment_ids=None, deterministic: bool = True) -> Float[Array, "B T V"]:
    encoded = self.encode(inputs, inputs_positions=inputs_positions,
                          inputs_segment_ids=inputs_segment_ids, deterministic=deterministic)
    return self.decode(encoded, inputs, decoder_inputs, decoder_positions=decoder_positions,
                       decoder_segment_ids=decoder_segment_ids,
                       inputs_segment_ids=inputs_segment_ids, deterministic=deterministic)

  def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> Cache:
    return init_cache(self.config, self.config.resolved_num_decoder_layers, batch_size,
                      max_length, dtype)


class DecoderLM(nn.Module):
  """Decoder-only causal language model: tokens [B, T] -> next-token logits [B, T, V]."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    _no_token_types(cfg, 'DecoderLM')
    self.decoder = Decoder(cfg, _embedding(cfg, cfg.vocab_size, 'embedding'), cfg.num_layers,
                           cross_attention=False)

  def __call__(self, inputs: Int[Array, "B T"], *, positions=None, segment_ids=None,
               deterministic: bool = True) -> Float[Array, "B T V"]:
    return self.decoder(inputs, positions, segment_ids, deterministic=deterministic)

  def decode_step(self, tokens: Int[Array, "B T"], cache: Cache, *, positions=None
                  ) -> tuple[Float[Array, "B T V"], Cache]:
    """A cached decoding step (see the module docstring)."""
    return self.decoder.decode_step(tokens, cache, positions)

  def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> Cache:
    return init_cache(self.config, self.config.num_layers, batch_size, max_length, dtype)


class EncoderModel(nn.Module):
  """Encoder-only (BERT-style): a masked-LM head and, with `num_classes`, a classifier.

  `__call__` returns {'mlm_logits': [B, T, V], 'class_logits': [B, C]} (the latter only
  when `config.num_classes > 0`); `mlm_logits` and `classify` compute one head each.
  The classifier reads the first token (put a bos/[CLS] token there). With
  `num_token_types`, every method takes `token_type_ids` [B, T] (default: all type 0).
  The MLM head's activation is GELU: exact when the model's is 'gelu_exact' (BERT's head
  uses its hidden_act), else the tanh approximation.
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embedding = _embedding(cfg, cfg.vocab_size, 'embedding')
    self.encoder = Encoder(cfg, self.embedding)
    dense = lambda features, axes, name: nn.Dense(
        features, dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, name=name,
        dot_general=projection_dot_general(cfg.cpu_matmul),
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    self.mlm_transform = dense(cfg.d_model, ('embed', 'mlp'), 'mlm_transform')
    self.mlm_norm = make_norm(cfg, 'mlm_norm')
    self.mlm_bias = self.param('mlm_bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('vocab',)), (cfg.vocab_size,), cfg.storage_dtype)
    if cfg.num_classes:
      self.pooler = dense(cfg.d_model, ('embed', 'mlp'), 'pooler')
      self.classifier = dense(cfg.num_classes, ('mlp', None), 'classifier')

  def encode(self, inputs, *, positions=None, segment_ids=None, token_type_ids=None,
             deterministic: bool = True):
    return self.encoder(inputs, positions, segment_ids, deterministic, token_type_ids)

  def _mlm_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    exact = self.config.activation == 'gelu_exact'
    x = self.mlm_norm(activation_fn('gelu_exact' if exact else 'gelu')(self.mlm_transform(x)))
    return (self.embedding.attend(x) + self.mlm_bias).astype(jnp.float32)

  def _class_head(self, x: Float[Array, "B T D"]) -> Float[Array, "B C"]:
    if not self.config.num_classes:
      raise ValueError('this EncoderModel has no classifier: set config.num_classes')
    pooled = jnp.tanh(self.pooler(x[:, 0]))
    return self.classifier(pooled).astype(jnp.float32)

  def mlm_logits(self, inputs, *, positions=None, segment_ids=None, token_type_ids=None,
                 deterministic: bool = True) -> Float[Array, "B T V"]:
    return self._mlm_head(self.encode(inputs, positions=positions, segment_ids=segment_ids,
                                      token_type_ids=token_type_ids,
                                      deterministic=deterministic))

  def classify(self, inputs, *, positions=None, segment_ids=None, token_type_ids=None,
               deterministic: bool = True) -> Float[Array, "B C"]:
    return self._class_head(self.encode(inputs, positions=positions, segment_ids=segment_ids,
                                        token_type_ids=token_type_ids,
                                        deterministic=deterministic))

  def __call__(self, inputs, *, positions=None, segment_ids=None, token_type_ids=None,
               deterministic: bool = True):
    x = self.encode(inputs, positions=positions, segment_ids=segment_ids,
                    token_type_ids=token_type_ids, deterministic=deterministic)
    out = {'mlm_logits': self._mlm_head(x)}
    if self.config.num_classes:
      out['class_logits'] = self._class_head(x)
    return out


# --- scanned and unscanned parameter layouts ----------------------------------------------

_LAYER_NAME = re.compile(r'layer_(\d+)')


def _is_unrolled_stack(node) -> bool:
  return isinstance(node, dict) and any(_LAYER_NAME.fullmatch(str(k)) for k in node)


def _is_scanned_stack(node) -> bool:
  return isinstance(node, dict) and 'layers' in node


def scan_params(tree: Any) -> Any:
  """Unscanned -> scanned layout: in every dict holding `layer_0` ... `layer_{L-1}`, those
  become one `layers` entry whose leaves are stacked on a new leading axis. Works on
  parameter trees and on anything that mirrors them (optimizer states, shapes)."""
  def convert(node):
    if not _is_unrolled_stack(node):
      return node
    names = sorted((k for k in node if _LAYER_NAME.fullmatch(str(k))),
                   key=lambda k: int(_LAYER_NAME.fullmatch(k).group(1)))
    if [int(_LAYER_NAME.fullmatch(k).group(1)) for k in names] != list(range(len(names))):
      raise ValueError(f'layers are not numbered 0..{len(names) - 1}: {names}')
    rest = {k: v for k, v in node.items() if k not in names}
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[node[k] for k in names])
    return {**rest, 'layers': stacked}
  return jax.tree.map(convert, tree, is_leaf=_is_unrolled_stack)


def unscan_params(tree: Any) -> Any:
  """Scanned -> unscanned layout: every `layers` entry is split along its leading axis into
  `layer_0` ... `layer_{L-1}` (the inverse of `scan_params`)."""
  def convert(node):
    if not _is_scanned_stack(node):
      return node
    stacked = node['layers']
    count = jax.tree.leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in node.items() if k != 'layers'}
    return {**rest, **{f'layer_{i}': jax.tree.map(lambda x: x[i], stacked)
                       for i in range(count)}}
  return jax.tree.map(convert, tree, is_leaf=_is_scanned_stack)


def is_scanned(params: Any) -> bool:
  """Whether a parameter tree has the scanned layout."""
  return any(getattr(key, 'key', None) == 'layers'
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] for key in path)


def unscanned(model: nn.Module, variables: Any) -> tuple[nn.Module, Any]:
  """The same model with its layers unrolled, and its variables in that layout (decoding
  with a KV cache runs this way). Unscanned models pass through unchanged."""
  if not model.config.scan_layers:
    return model, variables
  return (model.clone(config=model.config.replace(scan_layers=False)),
          unscan_params(variables))
