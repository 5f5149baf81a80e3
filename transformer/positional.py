"""Positional information: the paper's sinusoids, learned embeddings and rotary (RoPE).

    PE(pos, 2i)   = sin(pos / 10000^(2i / d_model))          (paper, section 3.5)
    PE(pos, 2i+1) = cos(pos / 10000^(2i / d_model))

Marian and fairseq keep the same angles in another channel order ('split' layout):
sin(pos / 10000^(2i / d_model)) in channel i and the cosine in channel d_model/2 + i.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jaxtyping import Array, Float, Int


def sinusoidal_encoding(length: int, d_model: int, max_wavelength: float = 10_000.0,
                        layout: str = 'interleaved') -> Float[Array, "length d_model"]:
  """The paper's fixed encoding, float32: sines on even and cosines on odd channels
  ('interleaved'), or sines in the first half and cosines in the second ('split')."""
  # Computed in float64 NumPy so long positions keep their precision, then cast once.
  position = np.arange(length, dtype=np.float64)[:, None]
  two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
  angle = position / np.power(max_wavelength, two_i / d_model)
  sines, cosines = np.sin(angle), np.cos(angle[:, : d_model // 2])
  if layout == 'interleaved':
    table = np.zeros((length, d_model), dtype=np.float64)
    table[:, 0::2] = sines
    table[:, 1::2] = cosines
  elif layout == 'split':
    table = np.concatenate([sines, cosines], axis=1)
  else:
    raise ValueError(f"layout must be 'interleaved' or 'split', not {layout!r}")
  return jnp.asarray(table, dtype=jnp.float32)


def apply_rope(x: Float[Array, "B T N H"], positions: Int[Array, "B T"],
               max_wavelength: float = 10_000.0) -> Float[Array, "B T N H"]:
  """Rotary position embedding (Su et al., 2021), rotating channel pairs (i, i + H/2).

  After rotation, q(m) . k(n) depends on positions only through m - n.
  """
  h = x.shape[-1]
  if h % 2:
    raise ValueError(f'RoPE needs an even head width, got {h}')
  fraction = 2.0 * jnp.arange(h // 2, dtype=jnp.float32) / h
  inv_frequency = max_wavelength ** -fraction                      # [H/2]
  angle = positions[..., None].astype(jnp.float32) * inv_frequency   # [B, T, H/2]
  sin = jnp.sin(angle)[:, :, None, :]
  cos = jnp.cos(angle)[:, :, None, :]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
  """A trained table of `max_len` position vectors (BERT, GPT-2)."""
  max_len: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, positions: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    table = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), (None, 'embed')),
        (self.max_len, self.features), self.param_dtype)
    return jnp.take(table, positions, axis=0).astype(self.dtype)
