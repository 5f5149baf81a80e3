"""Token-level losses and metrics: label-smoothed cross-entropy with per-token weights.

Everything returns sums, not means, so that sums over micro-batches and devices divided
by the total weight give exactly the single-device answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def cross_entropy_sums(logits: Float[Array, "... V"], targets: Int[Array, "..."],
                       weights: Float[Array, "..."], label_smoothing: float = 0.0
                       ) -> dict[str, Array]:
  """Sums over the weighted tokens of: the training loss, the NLL, correct predictions.

  With label smoothing e (paper section 5.4) the target distribution is (1 - e) on the true
  token and e / V elsewhere; the loss is shifted by that distribution's entropy so a
  perfect model scores 0, as in tensor2tensor. `nll` is the unsmoothed negative
  log-likelihood, the basis of perplexity.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / vocab
    # -sum_v q_v log p_v with q = (1 - e) onehot + e / V, minus the entropy of q.
    smoothed = confidence * nll - low * jnp.sum(log_probs, axis=-1)
    entropy = -(confidence + low) * jnp.log(confidence + low) - (vocab - 1) * low * jnp.log(low)
    loss = smoothed - entropy
  else:
    loss = nll
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(loss * weights),
      'nll_sum': jnp.sum(nll * weights),
      'correct_sum': jnp.sum(correct * weights),
      'weight_sum': jnp.sum(weights),
  }


def sequence_exact_matches(logits: Float[Array, "B T V"], targets: Int[Array, "B T"],
                           weights: Float[Array, "B T"]) -> dict[str, Array]:
  """Rows whose every weighted token is predicted right under teacher forcing.

  If the argmax is right at every position given the true prefix, greedy decoding
  reproduces the target exactly (each greedy step then sees the true prefix), so this equals
  greedy-decoding exact match, at the cost of one forward pass.
  """
  wrong = (jnp.argmax(logits, axis=-1) != targets) & (weights > 0)
  real_row = jnp.any(weights > 0, axis=-1)
  exact = (~jnp.any(wrong, axis=-1)) & real_row
  return {'exact_sum': jnp.sum(exact.astype(jnp.float32)),
          'sequence_sum': jnp.sum(real_row.astype(jnp.float32))}
