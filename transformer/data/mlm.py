"""BERT's masking for the encoder-only model, as a pure NumPy transform.

Of the non-special tokens, each is selected for prediction with probability
``mlm_probability`` (BERT: 0.15). Of the selected tokens 80% become ``mask_id``,
10% a random real token (ids ``[first_real_id, vocab_size)``) and 10% stay unchanged.
Only selected positions get weight 1 (Devlin et al. 2019, section 3.1 and appendix A.1).
"""

from __future__ import annotations

import numpy as np


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    first_real_id: int,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    selectable: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Masks ``tokens`` (any shape, int) the BERT way.

  Ids below ``first_real_id`` (pad, bos, eos, unk, mask) are never selected; or, when
  given, exactly the positions where ``selectable`` is True may be (a pretrained
  vocabulary's specials need not be its first ids).

  Returns:
    ``inputs`` (the masked ids, int32), ``targets`` (the original ids, int32) and
    ``weights`` (float32, 1.0 exactly where a token was selected for prediction).
  """
  tokens = np.asarray(tokens)
  real = tokens >= first_real_id if selectable is None else np.asarray(selectable)
  selected = real & (rng.random(tokens.shape) < mlm_probability)
  action = rng.random(tokens.shape)
  to_mask = selected & (action < mask_fraction)
  to_random = selected & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
  random_ids = rng.integers(first_real_id, vocab_size, size=tokens.shape)
  inputs = np.where(to_mask, mask_id, np.where(to_random, random_ids, tokens))
  return {
      'inputs': inputs.astype(np.int32),
      'targets': tokens.astype(np.int32),
      'weights': selected.astype(np.float32),
  }
