"""The projection matmul x @ W with a weight gradient that XLA's CPU backend computes fast.

The weight gradient of y = x W is dW = x^T dy: it contracts the token dimension, the
*leading* dimension of both x [M, K] and dy [M, N]. XLA's CPU backend lays one operand out
transposed for that product and picks dy (the wide one: [B*T, F] in the feed-forward
layer), copying it with a slow strided loop: in the 4-layer Tiny Shakespeare model those
copies were a quarter of the train step. Here the backward pass transposes the narrower
of x and dy itself and keeps that copy from being folded back into the product, so every
matmul sees row-major operands. GPU and TPU matmuls read transposed operands without such
copies, so the models use `dot_general` below only on CPUs by default
(`ModelConfig.cpu_matmul`); the math is the same either way.
"""

from __future__ import annotations

import math

import jax
from jax import lax


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  # Materialise the transpose of the narrower of x and dy (the barrier stops XLA from
  # folding it back into the product): dW = x^T dy, or (dy^T x)^T, whose transpose is of
  # the small [K, N] result (behind a barrier too, or XLA would fold it into the product
  # as a transposed operand, which sends the product to a slower kernel).
  if x.shape[1] <= dy.shape[1]:
    dw = lax.optimization_barrier(x.T) @ dy
  else:
    dw = lax.optimization_barrier(lax.optimization_barrier(dy.T) @ x).T
  return (dy @ w.T).astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` for projections (trailing lhs dims against leading rhs dims).

  A drop-in `dot_general=` for `nn.Dense` / `nn.DenseGeneral`. Other contractions, and
  the `precision` / `preferred_element_type` options, go to `lax.dot_general` unchanged.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  lhs_contract = tuple(d % lhs.ndim for d in lhs_contract)
  n = len(lhs_contract)
  is_projection = (not lhs_batch and not rhs_batch
                   and lhs_contract == tuple(range(lhs.ndim - n, lhs.ndim))
                   and tuple(rhs_contract) == tuple(range(n)))
  if not is_projection or precision is not None or preferred_element_type is not None:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  batch_shape, features = lhs.shape[:lhs.ndim - n], rhs.shape[n:]
  contracted = math.prod(rhs.shape[:n])
  out = _matmul(lhs.reshape(-1, contracted), rhs.reshape(contracted, -1))
  return out.reshape(*batch_shape, *features)


def projection_dot_general(cpu_matmul: bool | None):
  """The `dot_general` for a model's projections: ours on CPU (None: when the default
  backend is a CPU), XLA's own elsewhere."""
  if cpu_matmul is None:
    cpu_matmul = jax.default_backend() == 'cpu'
  return dot_general if cpu_matmul else None


__all__ = ['dot_general', 'projection_dot_general']
