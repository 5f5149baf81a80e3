"""`ModelConfig`: every architectural choice of the three model families, in one frozen record.

Its defaults are the paper's base model (Table 3) and the one source of model defaults:
training configs (`transformer/train/defaults.py`) take theirs from these fields. Presets:
`paper_base()` (63.1M parameters with a shared 37000-token vocabulary), `paper_big()` (213M)
and `tiny()`, two layers of width 64 for tests and laptops.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


# What each layer keeps for the backward pass (the rest is recomputed), from the most memory
# to the least: 'none' keeps everything (no rematerialisation); 'dots_with_no_batch_dims_saveable'
# keeps the projections' outputs (matmuls against weights) but recomputes attention scores;
# 'dots_saveable' keeps every matmul output; 'save_attention_out' keeps only each attention's
# output; 'full' keeps only each layer's input. Names follow `jax.checkpoint_policies`.
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable',
                  'save_attention_out')
ACTIVATIONS = ('relu', 'gelu', 'gelu_exact', 'silu', 'swiglu')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int | None = None       # source (and shared) vocabulary, pad id 0 included;
                                      # None: the tokenizer's (filled in by the trainer)
  target_vocab_size: int | None = None  # None: the target side uses `vocab_size` too
  d_model: int = 512                  # D, the residual stream width
  num_heads: int = 8                  # N query heads
  num_kv_heads: int | None = None     # K key/value heads; None = num_heads (the paper's MHA)
  head_dim: int | None = None         # H; None = d_model // num_heads (the paper's d_k = d_v)
  mlp_dim: int = 2048                 # F, the feed-forward inner width (paper: d_ff)
  num_layers: int = 6                 # L encoder layers (and decoder layers unless below)
  num_decoder_layers: int | None = None  # None = num_layers
  max_len: int = 256                  # longest position the positional encoding covers
  dropout_rate: float = 0.1           # P_drop: sub-layer outputs and embeddings
  attention_dropout_rate: float = 0.0  # dropout on attention weights
  activation: str = 'relu'            # feed-forward: 'relu' (paper), 'gelu' (tanh
                                      # approximation: GPT-2), 'gelu_exact' (erf: BERT),
                                      # 'silu' (Marian's swish), 'swiglu' (gated: Llama)
  norm: str = 'layernorm'             # 'layernorm' (paper) or 'rmsnorm'
  norm_epsilon: float = 1e-6          # added to the variance in every norm (GPT-2: 1e-5,
                                      # BERT: 1e-12)
  pre_norm: bool = False              # False: post-LN as in the paper; True: pre-LN
  position: str = 'sinusoidal'        # 'sinusoidal' (paper), 'learned' or 'rope'
  sinusoid_layout: str = 'interleaved'  # 'interleaved': sines on even, cosines on odd
                                      # channels; 'split': sines in the first half, cosines
                                      # in the second (Marian, fairseq)
  rope_max_wavelength: float = 10_000.0  # RoPE's base (Hugging Face's rope_theta)
  use_bias: bool = True               # biases in attention and feed-forward projections
  qkv_bias: bool | None = None        # biases of the query/key/value projections alone;
                                      # None: use_bias (Qwen2: True with use_bias False)
  share_embeddings: bool = True       # encoder-decoder: one embedding for source and target
  tie_output: bool = True             # output projection = target embedding transposed
  logits_bias: bool | None = None     # a bias on the output logits. None: only an untied
                                      # output projection has one; True: tied outputs too
                                      # (Marian's final_logits_bias); False: none (Llama)
  scale_embeddings: bool = True       # multiply embeddings by sqrt(d_model) (section 3.4)
  num_token_types: int = 0            # EncoderModel: >0 adds token-type (segment A/B)
                                      # embeddings, read from `token_type_ids` (BERT)
  embedding_norm: bool = False        # a norm after the summed embeddings (BERT)
  mask_decoder_pad: bool = True       # False: the decoder's self-attention reads pad tokens
                                      # like any other and counts them in its positions
                                      # (Marian starts decoding from the pad token)
  num_classes: int = 0                # EncoderModel: >0 adds a sequence-classification head
  pad_id: int = 0                     # the padding token's id (masked out of attention)
  dtype: str = 'float32'              # compute dtype, e.g. 'bfloat16'
  param_dtype: str = 'float32'        # parameter storage dtype
  attention_impl: str | None = None   # None (einsum), 'xla' or 'cudnn' (jax.nn fused path),
                                      # 'auto': cuDNN on GPUs where the mask allows, else None
  scan_layers: bool = False           # one nn.scan over each stack's layers (parameters
                                      # stacked on a leading 'layers' axis): compile time and
                                      # program size stop growing with depth
  remat_policy: str = 'none'          # recompute layer activations in the backward pass:
                                      # see REMAT_POLICIES
  cpu_matmul: bool | None = None      # projections with transformer.matmul's CPU-friendly
                                      # gradient; None: when the default backend is a CPU

  def __post_init__(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'remat_policy must be one of {sorted(REMAT_POLICIES)}, not '
                       f'{self.remat_policy!r}')
    if self.attention_impl not in (None, 'xla', 'cudnn', 'auto'):
      raise ValueError("attention_impl must be None, 'xla', 'cudnn' or 'auto', not "
                       f'{self.attention_impl!r}')
    if self.vocab_size is not None and self.vocab_size < 1:
      raise ValueError(f'vocab_size must be positive (or None: the tokenizer\'s), not '
                       f'{self.vocab_size}')
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}; '
                       'set head_dim explicitly')
    if self.num_heads % (self.num_kv_heads or self.num_heads):
      raise ValueError(f'num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}')
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {ACTIVATIONS}, not {self.activation!r}')
    if self.norm_epsilon <= 0:
      raise ValueError(f'norm_epsilon must be positive, not {self.norm_epsilon}')
    if self.sinusoid_layout not in ('interleaved', 'split'):
      raise ValueError("sinusoid_layout must be 'interleaved' or 'split', not "
                       f'{self.sinusoid_layout!r}')
    if self.num_token_types < 0:
      raise ValueError(f'num_token_types must be >= 0, not {self.num_token_types}')
    if self.norm not in ('layernorm', 'rmsnorm'):
      raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', not {self.norm!r}")
    if self.position not in ('sinusoidal', 'learned', 'rope'):
      raise ValueError(f"position must be 'sinusoidal', 'learned' or 'rope', not {self.position!r}")
    if (self.share_embeddings and self.target_vocab_size is not None
        and self.target_vocab_size != self.vocab_size):
      raise ValueError('share_embeddings needs target_vocab_size == vocab_size (or None)')

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def resolved_num_kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def resolved_qkv_bias(self) -> bool:
    return self.use_bias if self.qkv_bias is None else self.qkv_bias

  @property
  def resolved_logits_bias(self) -> bool:
    """Whether the logits get a bias (see `logits_bias`)."""
    return bool(self.logits_bias) if self.tie_output else self.logits_bias is not False

  @property
  def resolved_target_vocab_size(self) -> int:
    return self.target_vocab_size or self.vocab_size

  @property
  def resolved_num_decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)


def tiny(**changes) -> ModelConfig:
  """Two layers of width 64, no dropout, 32 tokens: compiles in seconds on a CPU."""
  fields = dict(vocab_size=32, d_model=64, num_heads=4, mlp_dim=256, num_layers=2,
                dropout_rate=0.0)
  return ModelConfig(**{**fields, **changes})


def paper_base(vocab_size: int = 37_000, **changes) -> ModelConfig:
  """Table 3, "base": N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1 (the
  defaults), with positions for sequences of up to 1024 tokens."""
  return ModelConfig(**{'vocab_size': vocab_size, 'max_len': 1024, **changes})


def paper_big(vocab_size: int = 37_000, **changes) -> ModelConfig:
  """Table 3, "big": N=6, d_model=1024, d_ff=4096, h=16, d_k=d_v=64, P_drop=0.3."""
  fields = dict(vocab_size=vocab_size, d_model=1024, num_heads=16, mlp_dim=4096,
                dropout_rate=0.3, max_len=1024)
  return ModelConfig(**{**fields, **changes})
