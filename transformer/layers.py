"""The position-wise feed-forward network and the encoder and decoder layers.

Each sub-layer (attention or feed-forward) is wrapped in a residual connection and layer
normalisation, with dropout on the sub-layer output before the residual add (paper, 5.4):

    post-LN (the paper):  x = Norm(x + Dropout(Sublayer(x)))
    pre-LN  (option):     x = x + Dropout(Sublayer(Norm(x)))   (and a final Norm per stack)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jaxtyping import Array, Float, Int

from transformer.attention import AttentionMask, MultiHeadAttention
from transformer.config import ModelConfig
from transformer.matmul import projection_dot_general
from transformer.sharding import constrain_rows


def activation_fn(name: str) -> Callable[[Array], Array]:
  """The non-gated activations by config name: 'gelu' is the tanh approximation (GPT-2's
  gelu_new), 'gelu_exact' the erf form (BERT's gelu), 'silu' Marian's swish."""
  functions = {'relu': nn.relu, 'gelu': nn.gelu,
               'gelu_exact': lambda x: nn.gelu(x, approximate=False), 'silu': nn.silu}
  if name not in functions:
    raise ValueError(f'unknown activation {name!r}')
  return functions[name]


class FeedForward(nn.Module):
  """FFN(x) = act(x W1 + b1) W2 + b2 (paper, eq. 2); SwiGLU: (silu(x Wg) * x W1) W2."""
  mlp_dim: int
  activation: str = 'relu'
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  dot_general: Any = None             # None: lax.dot_general; see transformer.matmul

  def _dense(self, features: int, axes: tuple[str, str], name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=name, dot_general=self.dot_general,
                    kernel_init=nn.with_logical_partitioning(self.kernel_init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))

  @nn.compact
  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    hidden = self._dense(self.mlp_dim, ('embed', 'mlp'), 'wi')(x)
    if self.activation == 'swiglu':
      hidden = nn.silu(self._dense(self.mlp_dim, ('embed', 'mlp'), 'gate')(x)) * hidden
    else:
      hidden = activation_fn(self.activation)(hidden)
    return self._dense(x.shape[-1], ('mlp', 'embed'), 'wo')(hidden)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
  """LayerNorm (the paper) or RMSNorm, with float32 statistics and `norm_epsilon`."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if config.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=config.norm_epsilon, dtype=config.compute_dtype,
                      param_dtype=config.storage_dtype, scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=config.norm_epsilon, dtype=config.compute_dtype,
                      param_dtype=config.storage_dtype, scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      name=name)


def make_attention(config: ModelConfig, rope: bool, name: str | None = None) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=config.num_heads, head_dim=config.resolved_head_dim,
      num_kv_heads=config.num_kv_heads, dropout_rate=config.attention_dropout_rate,
      use_bias=config.use_bias, qkv_bias=config.qkv_bias, rope=rope,
      rope_max_wavelength=config.rope_max_wavelength, implementation=config.attention_impl,
      dtype=config.compute_dtype, param_dtype=config.storage_dtype, name=name,
      dot_general=projection_dot_general(config.cpu_matmul))


def make_feed_forward(config: ModelConfig, name: str | None = None) -> FeedForward:
  return FeedForward(mlp_dim=config.mlp_dim, activation=config.activation,
                     use_bias=config.use_bias, dtype=config.compute_dtype,
                     param_dtype=config.storage_dtype, name=name,
                     dot_general=projection_dot_general(config.cpu_matmul))


class _Residual(nn.Module):
  """Runs one sub-layer with its norm, dropout and residual connection (pre- or post-LN)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, sublayer: Callable[[Array], Any], deterministic: bool):
    norm = make_norm(self.config, 'norm')
    x = constrain_rows(x)   # the residual stream split by rows, as the batch is
    y = sublayer(norm(x) if self.config.pre_norm else x)
    y, extra = y if isinstance(y, tuple) else (y, None)
    y = nn.Dropout(self.config.dropout_rate)(y, deterministic=deterministic)
    x = x + y if self.config.pre_norm else norm(x + y)
    return constrain_rows(x), extra


class EncoderLayer(nn.Module):
  """Self-attention then feed-forward, each as a residual sub-layer."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.self_attention = make_attention(cfg, rope=cfg.position == 'rope')
    self.self_attention_block = _Residual(cfg)
    self.mlp = make_feed_forward(cfg)
    self.mlp_block = _Residual(cfg)

  def __call__(self, x: Float[Array, "B S D"], mask: AttentionMask | Array | None,
               positions: Int[Array, "B S"], deterministic: bool) -> Float[Array, "B S D"]:
    x, _ = self.self_attention_block(
        x, lambda h: self.self_attention(h, mask=mask, positions_q=positions,
                                         deterministic=deterministic), deterministic)
    x, _ = self.mlp_block(x, self.mlp, deterministic)
    return x


class DecoderLayer(nn.Module):
  """Masked self-attention, then (encoder-decoder only) cross-attention, then feed-forward.

  `__call__` is training and scoring. `decode_step` is a cached decoding step: its
  self-attention reads and extends this layer's KV cache (`MultiHeadAttention.decode_step`)
  and its cross-attention reads `cross_memory`, which `project_cross_memory(encoded)`
  computed once.
  """
  config: ModelConfig
  with_cross_attention: bool = True

  def setup(self):
    cfg = self.config
    self.self_attention = make_attention(cfg, rope=cfg.position == 'rope')
    self.self_attention_block = _Residual(cfg)
    if self.with_cross_attention:
      self.cross_attention = make_attention(cfg, rope=False)
      self.cross_attention_block = _Residual(cfg)
    self.mlp = make_feed_forward(cfg)
    self.mlp_block = _Residual(cfg)

  def project_cross_memory(self, encoded: Float[Array, "B S D"]) -> dict[str, Array]:
    return self.cross_attention.project_memory(encoded)

  def __call__(self, x: Float[Array, "B T D"], mask: AttentionMask | Array | None,
               positions: Int[Array, "B T"], deterministic: bool,
               encoded: Float[Array, "B S D"] | None = None,
               cross_mask: AttentionMask | Array | None = None) -> Float[Array, "B T D"]:
    x, _ = self.self_attention_block(
        x, lambda h: self.self_attention(h, mask=mask, positions_q=positions,
                                         deterministic=deterministic), deterministic)
    if self.with_cross_attention:
      if encoded is None:
        raise ValueError('this decoder layer has cross-attention: pass `encoded`')
      x, _ = self.cross_attention_block(
          x, lambda h: self.cross_attention(h, encoded, mask=cross_mask,
                                            deterministic=deterministic), deterministic)
    x, _ = self.mlp_block(x, self.mlp, deterministic)
    return x

  def decode_step(self, x: Float[Array, "B T D"], cache: dict[str, Array], mask: Array,
                  positions: Int[Array, "B T"], index: Int[Array, ""],
                  cross_memory: dict[str, Array] | None = None,
                  cross_mask: Array | None = None,
                  beam_slots: Int[Array, "B W S"] | None = None
                  ) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
    x, cache = self.self_attention_block(
        x, lambda h: self.self_attention.decode_step(
            h, mask, positions_q=positions, cache=cache, index=index, beam_slots=beam_slots),
        True)
    if self.with_cross_attention:
      if cross_memory is None:
        raise ValueError('this decoder layer has cross-attention: pass its memory')
      x, _ = self.cross_attention_block(
          x, lambda h: self.cross_attention.attend_memory(h, cross_memory, cross_mask), True)
    x, _ = self.mlp_block(x, self.mlp, True)
    return x, cache


class ScannedEncoderLayer(EncoderLayer):
  """`EncoderLayer` in the (carry, ...) -> (carry, output) form that `nn.scan` iterates."""

  def __call__(self, x, mask, positions, deterministic):
    return super().__call__(x, mask, positions, deterministic), None


class ScannedDecoderLayer(DecoderLayer):
  """`DecoderLayer` in the forms that `nn.scan` iterates: (carry, ...) -> (carry, output).

  Training carries x; a decoding step carries x, the KV cache of all layers (stacked on
  a leading layers axis, so that each layer's slots are written in place) and the layer's
  number, and reads this layer's cross-attention memory from the stacked ones;
  `project_cross_memory` stacks every layer's memory.
  """

  def __call__(self, x, mask, positions, deterministic, encoded=None, cross_mask=None):
    return super().__call__(x, mask, positions, deterministic, encoded, cross_mask), None

  def decode_step(self, carry, cross_memory, mask, positions, index, cross_mask, beam_slots):
    x, stacked, layer = carry
    own = jax.tree.map(lambda c: jax.lax.dynamic_index_in_dim(c, layer, keepdims=False),
                       stacked)
    x, own = super().decode_step(x, own, mask, positions, index, cross_memory, cross_mask,
                                 beam_slots)
    stacked = jax.tree.map(lambda c, o: jax.lax.dynamic_update_index_in_dim(c, o, layer, 0),
                           stacked, own)
    return (x, stacked, layer + 1), None

  def project_cross_memory(self, carry, encoded):
    return carry, super().project_cross_memory(encoded)
