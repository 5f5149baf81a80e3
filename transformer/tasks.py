"""One `Task` per model family: everything that differs between translation, language
modelling, masked-LM pretraining and classification, in one place.

A task says which model it trains and how to initialise it, what it needs from the data
(the sequences, their lengths, how a batch is finished), how a batch becomes
(logits, targets, weights) for the loss, what it adds to evaluation (exact match, BLEU),
its model FLOPs per token, and what it shows at the end of a run. The trainer, the
evaluator and the command line ask the task and never test the task's name.

    task = get_task(config.task)        # 'translation' | 'lm' | 'mlm' | 'classification'

A new task is a subclass of `Task` added to `TASKS`, and a config that names it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from transformer import inference, models
from transformer.config import ModelConfig
from transformer.data.pipeline import Needs, SequenceSpec, shift_right
from transformer.data.mlm import mask_tokens
from transformer.data.pipeline import Specials
from transformer.data.tokenizers import NUM_SPECIALS, PAD_ID
from transformer.errors import ConfigError
from transformer import losses as loss_lib
from transformer.bleu import corpus_bleu

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How evaluation and the command line decode (config.decode)."""
  beam_size: int = 4
  alpha: float = 0.6
  max_extra_len: int = inference.MAX_EXTRA_LEN


def _attention_layer_flops(cfg: ModelConfig, key_length: int, self_attention: bool = True
                           ) -> float:
  """Forward matmul FLOPs per query token of one attention block: the projections
  (2 per weight) and the scores and weighted sums over `key_length` keys."""
  n, k, h, d = cfg.num_heads, cfg.resolved_num_kv_heads, cfg.resolved_head_dim, cfg.d_model
  # Cross-attention keys/values are projected once per source token, not per query;
  # callers count those with the encoder.
  projections = 2 * d * h * (2 * n + (2 * k if self_attention else 0))
  return projections + 2 * 2 * key_length * n * h


def _feed_forward_flops(cfg: ModelConfig) -> float:
  return 2 * (3 if cfg.activation == 'swiglu' else 2) * cfg.d_model * cfg.mlp_dim


class Task:
  """The interface; the four instances below fill it in."""

  name: str
  model_class: type[nn.Module]

  def example_inputs(self, length: int = 8) -> tuple[jax.Array, ...]:
    """Inputs for `model.init` (shapes only matter)."""
    return (jnp.ones((1, length), jnp.int32),)

  def data_needs(self, data_config) -> Needs:
    raise NotImplementedError

  def sequence_lengths(self, data_config) -> dict[str, int]:
    return {k: s.length for k, s in self.data_needs(data_config).sequences.items()}

  def forward(self, model: nn.Module, params: Any, batch: Batch, *, deterministic: bool,
              rngs: dict[str, jax.Array] | None = None):
    """(logits, targets, weights) of a batch, for the loss."""
    raise NotImplementedError

  def eval_sums(self, logits, targets, weights) -> dict[str, jax.Array]:
    """Sums the evaluation adds to the loss's (e.g. exact matches)."""
    return {}

  def processed_tokens(self, batch: Batch, sums: Mapping[str, jax.Array]) -> jax.Array:
    """Tokens the model processed for this batch (throughput and MFU count these)."""
    return sums['weight_sum']

  def flops_per_token(self, cfg: ModelConfig, lengths: Mapping[str, int]) -> float:
    """Model FLOPs of one processed training token: forward + backward = 3 x the forward
    matrix multiplies (PaLM, appendix B)."""
    raise NotImplementedError

  def decode_metrics(self, model, params, datasets, split: str, settings: DecodeSettings,
                     limit: int = 0) -> dict[str, float]:
    """Metrics that need decoding (BLEU); `limit` examples (0: all)."""
    return {}

  def sample_outputs(self, model, params, datasets, count: int) -> list[str]:
    """A few printable outputs of the model on validation inputs, for the end of a run."""
    return []


class Translation(Task):
  """The encoder-decoder on source -> target pairs, teacher-forced."""

  name = 'translation'
  model_class = models.Transformer

  def example_inputs(self, length=8):
    tokens = jnp.ones((1, length), jnp.int32)
    return tokens, tokens

  def data_needs(self, data_config) -> Needs:
    return Needs(
        sequences={
            'inputs': SequenceSpec('source', data_config.max_source_len or data_config.max_len,
                                   eos=True),
            'targets': SequenceSpec('target', data_config.max_target_len or data_config.max_len,
                                    eos=True)},
        finalize=self._finalize)

  @staticmethod
  def _finalize(batch, *, packed, rng, tokenizer):
    del rng
    specials = Specials.of(tokenizer)
    batch = dict(batch)
    valid = batch['targets_segment_ids'] > 0
    batch['decoder_inputs'] = shift_right(batch['targets'], valid,
                                          batch['targets_positions'] if packed else None,
                                          bos=specials.bos, pad=specials.pad)
    batch['weights'] = valid.astype(np.float32)
    return batch

  def forward(self, model, params, batch, *, deterministic, rngs=None):
    logits = model.apply(
        {'params': params}, batch['inputs'], batch['decoder_inputs'],
        inputs_positions=batch.get('inputs_positions'),
        inputs_segment_ids=batch.get('inputs_segment_ids'),
        decoder_positions=batch.get('targets_positions'),
        decoder_segment_ids=batch.get('targets_segment_ids'),
        deterministic=deterministic, rngs=rngs)
    return logits, batch['targets'], batch['weights']

  def eval_sums(self, logits, targets, weights):
    return loss_lib.sequence_exact_matches(logits, targets, weights)

  def flops_per_token(self, cfg, lengths):
    source, target = lengths['inputs'], lengths['targets']
    encoder_layer = _attention_layer_flops(cfg, source) + _feed_forward_flops(cfg)
    # Each decoder layer: causal self-attention, cross-attention over the source (its
    # key/value projections are per source token), feed-forward.
    decoder_layer = (_attention_layer_flops(cfg, target)
                     + _attention_layer_flops(cfg, source, self_attention=False)
                     + _feed_forward_flops(cfg))
    k, h, d = cfg.resolved_num_kv_heads, cfg.resolved_head_dim, cfg.d_model
    cross_key_values = 2 * d * 2 * k * h * cfg.resolved_num_decoder_layers
    # Per target token: the source side's work is spread over the target tokens.
    per_source_token = cfg.num_layers * encoder_layer + cross_key_values
    forward = (per_source_token * source / max(target, 1)
               + cfg.resolved_num_decoder_layers * decoder_layer
               + 2 * d * cfg.resolved_target_vocab_size)
    return 3.0 * forward

  def decode_metrics(self, model, params, datasets, split, settings, limit=0):
    texts = datasets.texts(split)
    sources, references = texts['source'], texts['target']
    limit = limit or len(sources)
    hypotheses = inference.translate_texts(
        model, {'params': params}, datasets.tokenizer, sources[:limit],
        beam_size=settings.beam_size, alpha=settings.alpha,
        max_extra_len=settings.max_extra_len)
    references = references[:limit]
    if not any(any(c.isspace() for c in r.strip()) for r in references):
      # Every reference one word (the synthetic strings): BLEU's 2- to 4-grams never
      # match, so it reads 0 for all but exact copies. Whole outputs right is the measure.
      return {'decoded_exact_match': float(np.mean([h == r for h, r in
                                                    zip(hypotheses, references)]))}
    return {'bleu': corpus_bleu(hypotheses, references)}

  def sample_outputs(self, model, params, datasets, count):
    texts = datasets.texts('valid')
    sources, references = texts['source'][:count], texts['target'][:count]
    hypotheses = inference.translate_texts(model, {'params': params}, datasets.tokenizer,
                                           sources, beam_size=1)
    return [f'source: {s}\n  reference: {r}\n  output:    {h}'
            for s, r, h in zip(sources, references, hypotheses)]


def _encoder_flops(cfg: ModelConfig, length: int) -> float:
  return cfg.num_layers * (_attention_layer_flops(cfg, length) + _feed_forward_flops(cfg))


class LanguageModel(Task):
  """The decoder-only model predicting each next token (sentences or character windows)."""

  name = 'lm'
  model_class = models.DecoderLM

  def data_needs(self, data_config) -> Needs:
    lm_format = data_config.lm_format
    if lm_format == 'auto':
      lm_format = 'windows' if data_config.tokenizer == 'char' else 'sentences'
    if lm_format not in ('windows', 'sentences'):
      raise ConfigError("data.lm_format must be 'windows', 'sentences' or 'auto', "
                       f'not {lm_format!r}')
    length = data_config.max_len
    return Needs(
        sequences={'inputs': SequenceSpec('text', length, bos=True),
                   'targets': SequenceSpec('text', length, eos=True)},
        finalize=self._finalize, windows=lm_format == 'windows')

  @staticmethod
  def _finalize(batch, *, packed, rng, tokenizer):
    del packed, rng, tokenizer
    # bos + text and text + eos are packed alike: the targets' segments are the inputs'.
    batch = {k: v for k, v in batch.items() if not k.startswith('targets_')}
    batch['weights'] = (batch['inputs_segment_ids'] > 0).astype(np.float32)
    return batch

  def forward(self, model, params, batch, *, deterministic, rngs=None):
    logits = model.apply({'params': params}, batch['inputs'],
                         positions=batch.get('inputs_positions'),
                         segment_ids=batch.get('inputs_segment_ids'),
                         deterministic=deterministic, rngs=rngs)
    return logits, batch['targets'], batch['weights']

  def flops_per_token(self, cfg, lengths):
    forward = (_encoder_flops(cfg, lengths['inputs'])
               + 2 * cfg.d_model * cfg.vocab_size)
    return 3.0 * forward

  def sample_outputs(self, model, params, datasets, count):
    batch = next(iter(datasets.eval_batches('valid')))
    prompt = datasets.tokenizer.decode(batch['inputs'][0, :16].tolist())
    # One context's worth: a single compiled generation loop.
    new_tokens = max(model.config.max_len - 16, 1)
    samples = inference.generate_text(model, {'params': params}, datasets.tokenizer, prompt,
                                      max_new_tokens=new_tokens, temperature=0.8, top_k=40,
                                      num_samples=count)
    return [f'prompt: {prompt!r}\n  sample: {s!r}' for s in samples]


class MaskedLanguageModel(Task):
  """The encoder-only model predicting BERT-masked tokens (15%, 80/10/10)."""

  name = 'mlm'
  model_class = models.EncoderModel

  def data_needs(self, data_config) -> Needs:
    probability = data_config.mlm_probability

    def finalize(batch, *, packed, rng, tokenizer):
      del packed
      if tokenizer.mask_id is None:
        raise ConfigError('task mlm needs a tokenizer with a mask id (data.tokenizer '
                         "'sentencepiece', or 'char' with sentences)")
      batch = dict(batch)
      specials = [i for i in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id,
                              tokenizer.unk_id, tokenizer.mask_id) if i is not None]
      selectable = (batch['inputs_segment_ids'] > 0) & ~np.isin(batch['inputs'], specials)
      batch.update(mask_tokens(batch['inputs'], rng, mask_id=tokenizer.mask_id,
                               vocab_size=tokenizer.vocab_size, first_real_id=NUM_SPECIALS,
                               mlm_probability=probability, selectable=selectable))
      return batch

    return Needs(sequences={'inputs': SequenceSpec('text', data_config.max_len, bos=True,
                                                   eos=True)},
                 finalize=finalize)

  def forward(self, model, params, batch, *, deterministic, rngs=None):
    logits = model.apply({'params': params}, batch['inputs'],
                         positions=batch.get('inputs_positions'),
                         segment_ids=batch.get('inputs_segment_ids'), method='mlm_logits',
                         deterministic=deterministic, rngs=rngs)
    return logits, batch['targets'], batch['weights']

  def processed_tokens(self, batch, sums):
    # The model reads every real token, not only the 15% it predicts.
    return jnp.sum(batch['inputs'] != PAD_ID).astype(jnp.float32)

  def flops_per_token(self, cfg, lengths):
    head = 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.vocab_size
    return 3.0 * (_encoder_flops(cfg, lengths['inputs']) + head)


class Classification(Task):
  """The encoder-only model labelling a whole sequence from its first ([CLS]) token."""

  name = 'classification'
  model_class = models.EncoderModel

  def data_needs(self, data_config) -> Needs:
    return Needs(sequences={'inputs': SequenceSpec('text', data_config.max_len, bos=True,
                                                   eos=True)},
                 finalize=self._finalize, label=True, packable=False)

  @staticmethod
  def _finalize(batch, *, packed, rng, tokenizer):
    del packed, rng, tokenizer
    batch = dict(batch)
    batch['weights'] = (batch['inputs_segment_ids'][:, 0] > 0).astype(np.float32)  # pad rows: 0
    return batch

  def forward(self, model, params, batch, *, deterministic, rngs=None):
    logits = model.apply({'params': params}, batch['inputs'], method='classify',
                         deterministic=deterministic, rngs=rngs)
    return logits, batch['label'], batch['weights']

  def processed_tokens(self, batch, sums):
    return jnp.sum(batch['inputs'] != PAD_ID).astype(jnp.float32)

  def flops_per_token(self, cfg, lengths):
    return 3.0 * _encoder_flops(cfg, lengths['inputs'])


TASKS: dict[str, Task] = {task.name: task for task in
                          (Translation(), LanguageModel(), MaskedLanguageModel(),
                           Classification())}


def get_task(name: str) -> Task:
  """The task registered under `name`; an unknown name lists the known ones."""
  try:
    return TASKS[name]
  except KeyError:
    raise ConfigError(f'unknown task {name!r}; config.task must be one of '
                     f'{", ".join(repr(t) for t in TASKS)}') from None
