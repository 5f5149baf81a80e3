"""Scaled dot-product attention, its masks, and the multi-head attention module.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V          (paper, eq. 1)

Shapes (see `transformer/__init__.py`): B batch, T query length, S key length, N query
heads, K key/value heads (K divides N: N = K for the paper's multi-head attention, K = 1 for
multi-query, anything between for grouped-query), H head width, D model width.

Masks are boolean, True = may attend, broadcastable to [B, N, T, S] and combined with `&`.
The models pass an `AttentionMask`: the dense mask and, when it is only causal and/or
padding at the end of rows, that structure, which fused kernels take instead (cuDNN's
flash attention is happiest with `is_causal` and sequence lengths; see
`dot_product_attention`).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float, Int

from transformer import positional

# The backend the traced program is for, when it is not the default backend's (see
# `tracing_for`).
_TARGET_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    'target_backend', default=None)


@contextlib.contextmanager
def tracing_for(backend: str) -> Iterator[None]:
  """Attention traced inside chooses its implementation for `backend` ('gpu', 'cpu',
  'tpu') instead of for the default backend.

  The choice ('auto': cuDNN or the einsum path) is made while tracing, and tracing does
  not know where the program will run; `jax.export` of a GPU program on a CPU host
  (`transformer.train.export`) traces inside `tracing_for('gpu')`. A function traced and
  cached before keeps the choice it made then.
  """
  token = _TARGET_BACKEND.set(backend)
  try:
    yield
  finally:
    _TARGET_BACKEND.reset(token)


def target_backend() -> str:
  """The backend attention is traced for: `tracing_for`'s, else the default backend."""
  return _TARGET_BACKEND.get() or jax.default_backend()


# Finite rather than -inf so that a fully masked row is still a well-defined softmax; its
# weights are then zeroed explicitly (see `dot_product_attention`).
_MASKED_LOGIT = -1e30


def make_causal_mask(query_length: int, key_length: int | None = None,
                     offset: int | Int[Array, ""] = 0) -> Bool[Array, "1 1 T S"]:
  """Query t may attend to keys s <= t + offset (offset: keys already in a cache)."""
  key_length = query_length if key_length is None else key_length
  query_pos = jnp.arange(query_length)[:, None] + offset
  key_pos = jnp.arange(key_length)[None, :]
  return (key_pos <= query_pos)[None, None]


def make_padding_mask(query_tokens: Array, key_tokens: Array, pad_id: int = 0
                      ) -> Bool[Array, "B 1 T S"]:
  """True where both the query and the key are real tokens (not `pad_id`).

  Accepts token ids or booleans (True = real), since `True != 0`.
  """
  query_valid = query_tokens != pad_id
  key_valid = key_tokens != pad_id
  return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def make_segment_mask(query_segments: Int[Array, "B T"], key_segments: Int[Array, "B S"]
                      ) -> Bool[Array, "B 1 T S"]:
  """True where query and key belong to the same packed example (same segment id)."""
  return query_segments[:, None, :, None] == key_segments[:, None, None, :]


@flax.struct.dataclass
class AttentionMask:
  """A dense boolean mask, and the structure that produced it when fused kernels can use it.

  `structured=True` promises that `dense` is exactly: causal (if `is_causal`), keys
  s < `key_lengths[b]` (if given), queries t < `query_lengths[b]` (if given). That holds
  for rows whose padding is all at the end (right padding: our evaluation batches, the
  sources `inference` pads, unpacked training rows). Packed rows (segment ids) and
  left-padded prompts are not structured: they need the dense mask.
  """
  dense: Bool[Array, "#B #N #T #S"]
  query_lengths: Int[Array, "B"] | None = None
  key_lengths: Int[Array, "B"] | None = None
  is_causal: bool = flax.struct.field(pytree_node=False, default=False)
  structured: bool = flax.struct.field(pytree_node=False, default=False)

  def __and__(self, other: Array) -> 'AttentionMask':
    """A further dense condition (e.g. segments): the result is no longer structured."""
    return AttentionMask(self.dense & other)


def padding_attention_mask(query_valid: Bool[Array, "B T"], key_valid: Bool[Array, "B S"], *,
                           causal: bool = False, mask_queries: bool = True) -> AttentionMask:
  """Keys (and with `mask_queries`, queries) that are real tokens, optionally causal.

  The structured form counts each row's real tokens, which is exact when a row's padding
  comes after its tokens.
  """
  dense = key_valid[:, None, None, :]
  if mask_queries:
    dense = dense & query_valid[:, None, :, None]
  if causal:
    dense = dense & make_causal_mask(query_valid.shape[1], key_valid.shape[1])
  return AttentionMask(
      dense,
      query_lengths=query_valid.sum(-1).astype(jnp.int32) if mask_queries else None,
      key_lengths=key_valid.sum(-1).astype(jnp.int32), is_causal=causal, structured=True)


# The KV cache's head-major layouts, keys [B, K, H, S] and values [B, K, S, H], are the ones
# the two attention products read without a transpose: read through `from_cache_layout`,
# XLA folds the transposes into the products, where a [B, S, K, H] cache costs a copy of
# the whole cache per layer and decoding step (a third of a beam-search step on CPU).

def to_cache_layout(key_value: dict[str, Array]) -> dict[str, Array]:
  """{'key', 'value'} [B, S, K, H] -> keys [B, K, H, S], values [B, K, S, H]."""
  return {'key': key_value['key'].transpose(0, 2, 3, 1),
          'value': key_value['value'].transpose(0, 2, 1, 3)}


def from_cache_layout(cache: dict[str, Array]) -> dict[str, Array]:
  """Keys [B, K, H, S] and values [B, K, S, H] -> {'key', 'value'} [B, S, K, H]."""
  return {'key': cache['key'].transpose(0, 3, 1, 2),
          'value': cache['value'].transpose(0, 2, 1, 3)}


def _check_shapes(query: Array, key: Array, value: Array) -> None:
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError('query, key and value must be [B, T, N, H] / [B, S, K, H]; got '
                     f'{query.shape}, {key.shape}, {value.shape}')
  if key.shape != value.shape:
    raise ValueError(f'key {key.shape} and value {value.shape} must have the same shape')
  if query.shape[-1] != key.shape[-1]:
    raise ValueError(f'head widths differ: query {query.shape}, key {key.shape}')
  if query.shape[2] % key.shape[2]:
    raise ValueError(f'{key.shape[2]} key/value heads do not divide {query.shape[2]} '
                     'query heads')


def dot_product_attention(
    query: Float[Array, "B T N H"],
    key: Float[Array, "B S K H"],
    value: Float[Array, "B S K H"],
    mask: Bool[Array, "#B #N #T #S"] | AttentionMask | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    implementation: str | None = None,
    return_weights: bool = False,
) -> Float[Array, "B T N H"] | tuple[Float[Array, "B T N H"], Float[Array, "B N T S"]]:
  """softmax(Q K^T / sqrt(H)) V with boolean masks, grouped heads and attention dropout.

  Logits and softmax are computed in float32 whatever the input dtype; the output has the
  query's dtype. A query row whose keys are all masked returns zeros (never NaN).

  Args:
    query, key, value: see the module docstring; K must divide N.
    mask: boolean, True = may attend, broadcastable to [B, N, T, S]; or an
      `AttentionMask`, whose structure the fused implementations use when it has one.
    dropout_rate: probability of dropping an attention weight (paper: P_drop on sub-layer
      outputs; attention dropout is the common addition of the tensor2tensor code).
    dropout_rng: PRNG key, required when dropping.
    deterministic: no dropout when True.
    implementation: None for the einsum implementation below (any backend, dropout,
      weights); 'xla' or 'cudnn' to call `jax.nn.dot_product_attention` (cuDNN's fused
      flash attention on NVIDIA GPUs, bfloat16/float16 inputs); 'auto': 'cudnn' on a GPU
      when the mask is structured, else None. A structured `AttentionMask` goes to
      `jax.nn.dot_product_attention` as `is_causal` and sequence lengths; any other mask
      goes as a dense mask with 'xla', and is refused with 'cudnn' (dense boolean masks
      are the case reported to fail there, jax-ml/jax#28974): use 'xla', None or 'auto'
      for packed rows.
    return_weights: also return the [B, N, T, S] attention weights (einsum route only).
  """
  _check_shapes(query, key, value)
  structure = mask if isinstance(mask, AttentionMask) else None
  if structure is not None:
    mask = structure.dense
  if implementation == 'auto':
    fusable = structure is not None and structure.structured
    implementation = 'cudnn' if target_backend() == 'gpu' and fusable else None
  if implementation is not None:
    return _library_attention(query, key, value, mask, structure, implementation,
                              dropout_rate=0.0 if deterministic else dropout_rate,
                              return_weights=return_weights)
  b, t, n, h = query.shape
  k = key.shape[2]
  groups = n // k
  # Query head n uses key/value head n // groups.
  grouped_query = query.reshape(b, t, k, groups, h)
  logits = jnp.einsum('BTKGH,BSKH->BKGTS', grouped_query, key,
                      preferred_element_type=jnp.float32)
  logits = logits.reshape(b, n, t, -1).astype(jnp.float32) / jnp.sqrt(h).astype(jnp.float32)
  weights = _masked_softmax(logits, mask)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError('dropout_rng is required for attention dropout')
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  grouped_weights = weights.reshape(b, k, groups, t, -1).astype(value.dtype)
  out = jnp.einsum('BKGTS,BSKH->BTKGH', grouped_weights, value).reshape(b, t, n, h)
  out = out.astype(query.dtype)
  return (out, weights) if return_weights else out


def _masked_softmax(logits: Float[Array, "B N T S"], mask: Bool[Array, "#B #N #T #S"] | None
                    ) -> Float[Array, "B N T S"]:
  if mask is None:
    return jax.nn.softmax(logits, axis=-1)
  weights = jax.nn.softmax(jnp.where(mask, logits, _MASKED_LOGIT), axis=-1)
  # A fully masked row has uniform weights after the softmax; make it attend to nothing.
  return jnp.where(mask, weights, 0.0)


def _queries_by_source(query: Float[Array, "B*W T N H"], b: int, k: int
                       ) -> Float[Array, "B K X H"]:
  """Beam rows' queries [B * W, T, N, H] -> [B, K, X, H], X = (W, G, T): every query of
  batch row b's W beams that reads key head k."""
  rows, t, n, h = query.shape
  w, groups = rows // b, n // k
  grouped = query.reshape(b, w, t, k, groups, h).transpose(0, 3, 1, 4, 2, 5)
  return grouped.reshape(b, k, w * groups * t, h)


def _outputs_by_beam(out: Float[Array, "B K X H"], query_shape: tuple[int, ...]
                     ) -> Float[Array, "B*W T N H"]:
  """The inverse of `_queries_by_source`, for the attention's outputs."""
  rows, t, n, h = query_shape
  b, k = out.shape[:2]
  out = out.reshape(b, k, rows // b, n // k, t, h).transpose(0, 2, 4, 1, 3, 5)
  return out.reshape(rows, t, n, h)   # [B, W, T, K, G, H] -> rows


def beam_slot_attention(
    query: Float[Array, "B*W T N H"],
    key_cache: Float[Array, "B*W K H S"],
    value_cache: Float[Array, "B*W K S H"],
    beam_slots: Int[Array, "B W S"],
    mask: Bool[Array, "#B*W #N #T #S"] | None = None,
) -> Float[Array, "B*W T N H"]:
  """Attention for beam search over a KV cache that never moves (no dropout).

  Rows are beams: row b * W + w is beam w of batch row b. The caches are in the
  head-major layouts of `MultiHeadAttention`'s cache (keys [B*W, K, H, S], values
  [B*W, K, S, H]); position s of a row holds what that row's beam wrote at step s, and
  beam w of row b reads its position s from beam row `beam_slots[b, w, s]` (the beam its
  hypothesis went through at step s).

  The result is `dot_product_attention` with each beam's keys and values gathered from
  those rows, but nothing is gathered: each query is scored against all W rows of its
  batch row and keeps its slot's score, and its weights are spread back over the W rows
  to read the values. That is W times the products of a plain step, which for decoding's
  one query per beam costs less than moving the whole cache after every step.
  """
  b, w, s = beam_slots.shape
  rows, t, n, h = query.shape
  k = key_cache.shape[1]
  if (rows != b * w or key_cache.shape != (rows, k, h, s)
      or value_cache.shape != (rows, k, s, h) or n % k):
    raise ValueError(f'beam_slots {beam_slots.shape} does not fit query {query.shape}, '
                     f'key cache {key_cache.shape} and value cache {value_cache.shape} '
                     '(rows b * W + w, S cache positions, K dividing N)')
  groups = n // k
  # The products batch over (B, R, K), R the beam row a key or value is read from, so
  # that each row's [H, S] keys and [S, H] values are read where they lie; the query is
  # small, so it is the one copied to every beam row.
  grouped_query = _queries_by_source(query, b, k)[:, None]   # [B, 1, K, X, H]
  grouped_query = jnp.broadcast_to(grouped_query, (b, w, k, w * groups * t, h)
                                   ).reshape(rows, k, -1, h)
  logits = jnp.einsum('RKXH,RKHS->RKXS', grouped_query, key_cache,
                      preferred_element_type=jnp.float32).reshape(b, w, k, w, groups, t, s)
  # pick[b, r, 0, w, 0, 0, s]: beam w reads position s from beam row r.
  pick = (beam_slots[:, None, None, :, None, None, :]
          == jnp.arange(w)[None, :, None, None, None, None, None])
  logits = jnp.where(pick, logits, 0.0).sum(axis=1)  # [B, K, W, G, T, S]
  logits = logits.transpose(0, 2, 1, 3, 4, 5).reshape(rows, n, t, s)
  logits = logits / jnp.sqrt(h).astype(jnp.float32)
  weights = _masked_softmax(logits, mask).reshape(b, w, k, groups, t, s)
  weights = weights.transpose(0, 2, 1, 3, 4, 5)[:, None]  # [B, 1, K, W, G, T, S]
  spread = jnp.where(pick, weights, 0.0).astype(value_cache.dtype)  # [B, R, K, W, G, T, S]
  out = jnp.einsum('RKXS,RKSH->RKXH', spread.reshape(rows, k, -1, s), value_cache)
  out = out.reshape(b, w, k, -1, h).sum(axis=1)  # [B, K, X, H]
  return _outputs_by_beam(out, query.shape).astype(query.dtype)


def shared_memory_attention(
    query: Float[Array, "B*W T N H"],
    memory: dict[str, Array],
    mask: Bool[Array, "#B 1 1 S"] | None = None,
) -> Float[Array, "B*W T N H"]:
  """Attention of B * W query rows to a memory of B rows: row b * W + w reads memory row
  b (the W beams of one source read its encoder output). No dropout.

  `memory` is in the cache's layouts (keys [B, K, H, S], values [B, K, S, H]; see
  `MultiHeadAttention.project_memory`); `mask` is the memory's padding, with no query
  axis. Equal to `dot_product_attention` with the memory repeated W times, but each
  memory row is read once, by one product for all its W * T queries.
  """
  b, k, h, s = memory['key'].shape
  rows, n = query.shape[0], query.shape[2]
  if rows % b or n % k or memory['value'].shape != (b, k, s, h) or (
      mask is not None and (mask.shape[0] not in (1, b) or mask.shape[2] != 1)):
    raise ValueError(f'a memory of keys {memory["key"].shape} and values '
                     f'{memory["value"].shape} does not serve queries {query.shape} in '
                     f'groups, with a mask [B, 1, 1, S] of its rows (got '
                     f'{None if mask is None else mask.shape})')
  logits = jnp.einsum('BKXH,BKHS->BKXS', _queries_by_source(query, b, k), memory['key'],
                      preferred_element_type=jnp.float32)
  weights = _masked_softmax(logits / jnp.sqrt(h).astype(jnp.float32), mask)
  out = jnp.einsum('BKXS,BKSH->BKXH', weights.astype(memory['value'].dtype), memory['value'])
  return _outputs_by_beam(out, query.shape).astype(query.dtype)


def _library_attention(query, key, value, mask, structure, implementation, *, dropout_rate,
                       return_weights):
  """Routes to `jax.nn.dot_product_attention`, keeping our fully-masked-row semantics.

  A structured mask goes as `is_causal` and sequence lengths; others as a dense mask
  ('xla' only).
  """
  if implementation not in ('xla', 'cudnn'):
    raise ValueError(f"implementation must be None, 'xla' or 'cudnn'; got {implementation!r}")
  if return_weights:
    raise ValueError('return_weights needs implementation=None: fused kernels never '
                     'materialise the attention weights')
  if dropout_rate > 0.0:
    raise ValueError(f'implementation={implementation!r} has no attention dropout; use '
                     'implementation=None or attention_dropout_rate=0')
  structured = structure is not None and structure.structured
  if implementation == 'cudnn' and mask is not None and not structured:
    raise ValueError(
        "attention_impl='cudnn' takes causal and end-of-row padding masks (as is_causal and "
        'sequence lengths), not this dense mask (packed rows or left padding): use '
        "attention_impl='auto' (cuDNN where it can, einsum elsewhere), 'xla' or None, or "
        'data.pack=False')
  if implementation == 'cudnn' and target_backend() != 'gpu':
    raise ValueError("implementation='cudnn' needs an NVIDIA GPU, and this program is "
                     f"traced for {target_backend()!r}: use implementation=None or 'xla' "
                     "(or trace inside tracing_for('gpu') to export a GPU program)")
  b, t, n, _ = query.shape
  s = key.shape[1]
  if structured:
    out = jax.nn.dot_product_attention(
        query, key, value, is_causal=structure.is_causal,
        query_seq_lengths=structure.query_lengths,
        key_value_seq_lengths=structure.key_lengths, implementation=implementation)
    # Rows with no key to attend to are zeros, as in the einsum path: padded queries, and
    # every query of a row without real keys.
    row_valid = jnp.ones((b, t), jnp.bool_)
    if structure.query_lengths is not None:
      row_valid &= jnp.arange(t) < structure.query_lengths[:, None]
    if structure.key_lengths is not None:
      row_valid &= (structure.key_lengths > 0)[:, None]
    return jnp.where(row_valid[:, :, None, None], out, 0).astype(out.dtype)
  full_mask = None if mask is None else jnp.broadcast_to(mask, (b, n, t, s))
  out = jax.nn.dot_product_attention(query, key, value, mask=full_mask,
                                     implementation=implementation)
  if full_mask is not None:
    row_has_key = full_mask.any(axis=-1)  # [B, N, T]
    out = jnp.where(row_has_key.transpose(0, 2, 1)[..., None], out, 0).astype(out.dtype)
  return out


class MultiHeadAttention(nn.Module):
  """Multi-head attention with the paper's separate Q, K, V and output projections.

  Self-attention when `inputs_kv` is None, cross-attention otherwise. With `num_kv_heads`
  smaller than `num_heads` it is grouped-query (or multi-query) attention. With `rope=True`
  queries and keys are rotated by their positions (RoPE). To look at the attention
  weights, apply with `mutable=['intermediates']`: each layer records
  `attention_weights` [B, N, T, S].

  `__call__` is training and scoring; decoding has two calls of its own:

  - `decode_step`: self-attention over this layer's KV cache, keys [B, K, H, S_max] and
    values [B, K, S_max, H] (head-major: the layouts the attention products read in
    place). The new tokens' keys and values are written at `index` and the cache is
    returned. Beam search may pass
    `beam_slots` [B, W, S_max]: the cache rows are then beams whose keys and values stay
    where they were written, and each beam reads its history through its slots
    (`beam_slot_attention`).
  - `attend_memory`: cross-attention to a fixed memory whose keys and values
    `project_memory` computed once (in the cache's layouts); a memory of B rows serves
    B * W query rows, W consecutive rows per memory row (the beams of one source;
    `shared_memory_attention`).
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  dropout_rate: float = 0.0
  use_bias: bool = True
  qkv_bias: bool | None = None        # the query/key/value projections' biases; None: use_bias
  rope: bool = False
  rope_max_wavelength: float = 10_000.0
  implementation: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.xavier_uniform()
  dot_general: Any = None             # None: lax.dot_general; see transformer.matmul

  def _projection(self, heads: int) -> nn.DenseGeneral:
    use_bias = self.use_bias if self.qkv_bias is None else self.qkv_bias
    return nn.DenseGeneral(
        features=(heads, self.head_dim), use_bias=use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, dot_general=self.dot_general,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, ('embed', 'heads', 'kv')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('heads', 'kv')))

  def setup(self):
    num_kv_heads = self.num_kv_heads or self.num_heads
    self.query = self._projection(self.num_heads)
    self.key = self._projection(num_kv_heads)
    self.value = self._projection(num_kv_heads)

  @nn.compact
  def _output(self, out: Float[Array, "B T N H"], features: int) -> Float[Array, "B T D"]:
    """The output projection (its width is the input's, known at the first call)."""
    # The name remat_policy='save_attention_out' keeps for the backward pass.
    out = checkpoint_name(out, 'attention_out')
    return nn.DenseGeneral(
        features=features, axis=(-2, -1), use_bias=self.use_bias,
        dtype=self.dtype, param_dtype=self.param_dtype, name='out', dot_general=self.dot_general,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(out)

  def _query(self, inputs_q: Float[Array, "B T D"], positions_q: Int[Array, "B T"] | None
             ) -> Float[Array, "B T N H"]:
    query = self.query(inputs_q)
    if self.rope:
      if positions_q is None:
        raise ValueError('rope=True needs positions_q')
      query = positional.apply_rope(query, positions_q, self.rope_max_wavelength)
    return query

  def project_key_value(self, inputs_kv: Float[Array, "B S D"],
                        positions_kv: Int[Array, "B S"] | None = None
                        ) -> dict[str, Float[Array, "B S K H"]]:
    """Keys (rotated when `rope`) and values of `inputs_kv`."""
    key = self.key(inputs_kv)
    if self.rope:
      if positions_kv is None:
        raise ValueError('rope=True needs the key positions')
      key = positional.apply_rope(key, positions_kv, self.rope_max_wavelength)
    return {'key': key, 'value': self.value(inputs_kv)}

  def project_memory(self, memory: Float[Array, "B S D"]) -> dict[str, Array]:
    """Keys [B, K, H, S] and values [B, K, S, H] of a fixed memory (the encoder output),
    for `attend_memory`: in the cache's head-major layouts, which the attention products
    read in place (read as [B, S, K, H], a decoding loop re-transposes them at every
    step)."""
    return to_cache_layout(self.project_key_value(memory))

  def __call__(self,
               inputs_q: Float[Array, "B T D"],
               inputs_kv: Float[Array, "B S D"] | None = None,
               mask: Bool[Array, "#B #N #T #S"] | AttentionMask | None = None,
               *,
               positions_q: Int[Array, "B T"] | None = None,
               positions_kv: Int[Array, "B S"] | None = None,
               deterministic: bool = True) -> Float[Array, "B T D"]:
    query = self._query(inputs_q, positions_q)
    if inputs_kv is None:
      key_value = self.project_key_value(inputs_q, positions_q)
    else:
      key_value = self.project_key_value(inputs_kv, positions_kv)
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    implementation = self.implementation
    if implementation == 'auto' and target_backend() != 'gpu':
      implementation = None
    # Applying with mutable=['intermediates'] also records the [B, N, T, S] weights.
    record = self.is_mutable_collection('intermediates') and implementation is None
    out = dot_product_attention(query, key_value['key'], key_value['value'], mask,
                                dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
                                deterministic=deterministic, implementation=implementation,
                                return_weights=record)
    if record:
      out, weights = out
      self.sow('intermediates', 'attention_weights', weights)
    return self._output(out, inputs_q.shape[-1])

  def decode_step(self,
                  inputs_q: Float[Array, "B T D"],
                  mask: Bool[Array, "#B #N #T S"],
                  *,
                  positions_q: Int[Array, "B T"] | None,
                  cache: dict[str, Array],
                  index: Int[Array, ""],
                  beam_slots: Int[Array, "B W S"] | None = None
                  ) -> tuple[Float[Array, "B T D"], dict[str, Array]]:
    """Cached self-attention of T new tokens (a prompt, or one token per step).

    `cache` holds this layer's keys [B, K, H, S_max] and values [B, K, S_max, H]; the new
    tokens' keys and values are written at slots `index` .. `index + T - 1` and the
    updated cache is returned; `mask` covers all S_max slots. Always the einsum path: a
    decoding step has one query, and the slot table's reads are ours. No dropout.
    """
    query = self._query(inputs_q, positions_q)
    new = to_cache_layout(self.project_key_value(inputs_q, positions_q))
    index = jnp.asarray(index, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    cache = {
        'key': jax.lax.dynamic_update_slice(
            cache['key'], new['key'].astype(cache['key'].dtype), (zero, zero, zero, index)),
        'value': jax.lax.dynamic_update_slice(
            cache['value'], new['value'].astype(cache['value'].dtype),
            (zero, zero, index, zero)),
    }
    keys, values = cache['key'].astype(self.dtype), cache['value'].astype(self.dtype)
    if beam_slots is not None:
      out = beam_slot_attention(query, keys, values, beam_slots, mask)
    else:
      key_value = from_cache_layout({'key': keys, 'value': values})
      out = dot_product_attention(query, key_value['key'], key_value['value'], mask)
    return self._output(out, inputs_q.shape[-1]), cache

  def attend_memory(self,
                    inputs_q: Float[Array, "B T D"],
                    memory: dict[str, Array],
                    mask: Bool[Array, "#B 1 1 S"] | None = None,
                    *,
                    positions_q: Int[Array, "B T"] | None = None) -> Float[Array, "B T D"]:
    """Cross-attention to a memory from `project_memory` (keys [B', K, H, S], values
    [B', K, S, H]), B' = B rows, or B / W rows shared by W beams each. No dropout."""
    query = self._query(inputs_q, positions_q)
    memory = jax.tree.map(lambda x: x.astype(self.dtype), memory)
    if memory['key'].shape[0] != query.shape[0]:
      out = shared_memory_attention(query, memory, mask)
    else:
      key_value = from_cache_layout(memory)
      out = dot_product_attention(query, key_value['key'], key_value['value'], mask)
    return self._output(out, inputs_q.shape[-1])
