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

from transformer import attention, config, decode, hf, layers, models, nnx, positional
from transformer.attention import (AttentionMask, MultiHeadAttention, dot_product_attention,
                                   make_causal_mask, make_padding_mask, make_segment_mask)
from transformer.config import ModelConfig, paper_base, paper_big, tiny
from transformer.models import DecoderLM, EncoderModel, Transformer
from transformer.positional import apply_rope, sinusoidal_encoding

__all__ = [
    'attention', 'config', 'decode', 'hf', 'layers', 'models', 'nnx', 'positional',
    'AttentionMask', 'MultiHeadAttention', 'dot_product_attention', 'make_causal_mask',
    'make_padding_mask',
    'make_segment_mask', 'ModelConfig', 'paper_base', 'paper_big', 'tiny', 'DecoderLM',
    'EncoderModel', 'Transformer', 'apply_rope', 'sinusoidal_encoding',
]
