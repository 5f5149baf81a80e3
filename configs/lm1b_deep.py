"""A 24-layer, 341M-parameter decoder-only LM on TFDS `lm1b`: the config to start from on
a GPU (or TPU) host.

Llama-style blocks (pre-RMSNorm, RoPE, SwiGLU, no biases), d_model 1024, 16 heads, a
SentencePiece vocabulary of 32000 with tied embeddings: 341.1M parameters. Built for
accelerators: scanned layers (compile time independent of depth), bfloat16 compute with
float32 parameters and optimizer state (3.8 GiB with Adam's moments), full remat (each
layer keeps only its input; the step's memory under each policy is in
`benchmarks/RESULTS.md`, "Deep models"), and
`attention_impl='auto'`: cuDNN's fused attention on NVIDIA GPUs where the mask allows
(padding-only evaluation batches), the einsum path for packed training rows and on other
backends. Needs the TFDS download.
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'lm'
  c.model.update(d_model=1024, num_heads=16, mlp_dim=2816, num_layers=24, max_len=256,
                 dropout_rate=0.0, activation='swiglu', norm='rmsnorm', pre_norm=True,
                 position='rope', use_bias=False, scale_embeddings=False, dtype='bfloat16',
                 scan_layers=True, remat_policy='full',
                 attention_impl='auto')
  c.data.update(source='tfds', tfds_name='lm1b', tfds_text_key='text',
                tokenizer='sentencepiece', vocab_size=32_000, lm_format='sentences',
                max_len=256, pack=True, overlong='truncate')
  c.optim.update(schedule='warmup_cosine', learning_rate=3e-4, warmup_steps=2000,
                 end_learning_rate=3e-5, b2=0.95, eps=1e-8, weight_decay=0.1,
                 grad_clip_norm=1.0)
  c.train.update(batch_size=128, num_steps=200_000, log_every=100, eval_every=5000,
                 eval_batches=100, checkpoint_every=2000, steps_per_call=1)
  return c
