"""The Transformer of "Attention Is All You Need" and its descendants, in JAX and Flax.

Shape glossary, used in every einsum string, jaxtyping annotation and shape comment:

    B  batch                   N  query heads
    T  query (target) length   K  key/value heads (K divides N)
    S  key (source) length     H  head width (the paper's d_k = d_v)
    D  model width (d_model)   F  feed-forward width (d_ff)
    V  vocabulary              L  layers

Pure functions live in `attention`, `positional` and `decode`; small linen modules own the
parameters (`attention.MultiHeadAttention`, `layers.*`, `models.*`); `ModelConfig` in
`config` describes a whole model. `nnx` gives the models as Flax NNX modules, `hf` reads
and writes Hugging Face checkpoints.
"""

import importlib

# Names load on first use (PEP 562), so that light submodules (the data pipeline's worker
# processes, the command line's --help) start without importing JAX and Flax.
_EXPORTS = {
    'AttentionMask': 'attention', 'MultiHeadAttention': 'attention',
    'dot_product_attention': 'attention', 'make_causal_mask': 'attention',
    'make_padding_mask': 'attention', 'make_segment_mask': 'attention',
    'ModelConfig': 'config', 'paper_base': 'config', 'paper_big': 'config', 'tiny': 'config',
    'DecoderLM': 'models', 'EncoderModel': 'models', 'Transformer': 'models',
    'apply_rope': 'positional', 'sinusoidal_encoding': 'positional',
}
_SUBMODULES = ('attention', 'config', 'decode', 'hf', 'layers', 'models', 'nnx', 'positional')


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS) + list(_SUBMODULES))


__all__ = list(_SUBMODULES) + list(_EXPORTS)
