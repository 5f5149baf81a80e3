"""BERT (`BertForPreTraining`, `BertForMaskedLM`, model_type 'bert') <-> `EncoderModel`.

Post-LN, learned positions plus token-type embeddings, a LayerNorm over their sum, exact
GELU by default, biases everywhere, LayerNorm epsilon 1e-12. The MLM head (dense, GELU,
LayerNorm, the tied embedding plus a bias) is ours; the pooler (dense + tanh on [CLS]) and
the next-sentence classifier are our pooler and a 2-way classifier, present when the
checkpoint has them (`BertForPreTraining`, and bert-base-uncased's own files, which say
`BertForMaskedLM` but carry both).
"""

from __future__ import annotations

from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.hf import convert
from transformer.hf.convert import as_is, path
from transformer.models import EncoderModel

MODEL_TYPES = ('bert',)
PREFIX = 'bert.'
model_class = EncoderModel
IGNORED = (r'(bert\.)?embeddings\.position_ids',)
_NEXT_SENTENCE = 'cls.seq_relationship.weight'


def rename(name: str) -> str:
  """The LayerNorm names of TensorFlow-era checkpoints (gamma, beta) -> today's."""
  return name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta',
                                                                     'LayerNorm.bias')


def model_config(hf: dict, names: set[str]) -> ModelConfig:
  family = 'BERT'
  convert.require(hf, 'position_embedding_type', ['absolute'], 'absolute', family,
                  ' (relative position embeddings)')
  convert.require(hf, 'is_decoder', [False], False, family)
  convert.require(hf, 'add_cross_attention', [False], False, family)
  convert.require(hf, 'tie_word_embeddings', [True], True, family,
                  ' (the MLM output is the word embedding here)')
  return ModelConfig(
      vocab_size=hf['vocab_size'], d_model=hf['hidden_size'],
      num_heads=hf['num_attention_heads'], mlp_dim=hf['intermediate_size'],
      num_layers=hf['num_hidden_layers'], max_len=hf.get('max_position_embeddings', 512),
      dropout_rate=hf.get('hidden_dropout_prob', 0.1),
      attention_dropout_rate=hf.get('attention_probs_dropout_prob', 0.1),
      activation=convert.activation(hf.get('hidden_act', 'gelu'), family), norm='layernorm',
      norm_epsilon=hf.get('layer_norm_eps', 1e-12), pre_norm=False, position='learned',
      use_bias=True, tie_output=True, scale_embeddings=False,
      num_token_types=hf.get('type_vocab_size', 2), embedding_norm=True,
      num_classes=2 if _NEXT_SENTENCE in names or 'bert.' + _NEXT_SENTENCE in names else 0,
      pad_id=convert.token_id(hf, 'pad_token_id', hf['vocab_size']) or 0)


def hf_config(cfg: ModelConfig) -> dict:
  convert.check_representable(
      cfg, 'BERT', norm='layernorm', pre_norm=False, position='learned', use_bias=True,
      resolved_qkv_bias=True, scale_embeddings=False, embedding_norm=True,
      resolved_num_kv_heads=cfg.num_heads, resolved_head_dim=cfg.d_model // cfg.num_heads)
  if cfg.num_classes not in (0, 2):
    raise ConfigError(f'num_classes={cfg.num_classes}: BERT checkpoints with an MLM head '
                      'hold a 2-way (next-sentence) classifier or none')
  return {
      'architectures': ['BertForPreTraining' if cfg.num_classes else 'BertForMaskedLM'],
      'model_type': 'bert', 'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'num_attention_heads': cfg.num_heads, 'num_hidden_layers': cfg.num_layers,
      'intermediate_size': cfg.mlp_dim, 'max_position_embeddings': cfg.max_len,
      'type_vocab_size': cfg.num_token_types,
      'hidden_act': convert.hf_activation(cfg.activation, 'BERT'),
      'layer_norm_eps': cfg.norm_epsilon, 'hidden_dropout_prob': cfg.dropout_rate,
      'attention_probs_dropout_prob': cfg.attention_dropout_rate,
      'position_embedding_type': 'absolute', 'pad_token_id': max(cfg.pad_id, 0),
      'tie_word_embeddings': True,
  }


def tensors(cfg: ModelConfig) -> list[convert.Tensor]:
  d, f = cfg.d_model, cfg.mlp_dim
  table = [
      as_is('bert.embeddings.word_embeddings.weight', path('embedding/embedding'),
            (cfg.vocab_size, d)),
      as_is('bert.embeddings.position_embeddings.weight',
            path('encoder/embedder/position_embedding/embedding'), (cfg.max_len, d)),
      as_is('bert.embeddings.token_type_embeddings.weight',
            path('encoder/embedder/token_type_embedding/embedding'), (cfg.num_token_types, d)),
  ]
  table += convert.norm('bert.embeddings.LayerNorm', path('encoder/embedder/embedding_norm'), d)
  for i in range(cfg.num_layers):
    hf, ours = f'bert.encoder.layer.{i}', path(f'encoder/layer_{i}')
    names = {'query': f'{hf}.attention.self.query', 'key': f'{hf}.attention.self.key',
             'value': f'{hf}.attention.self.value', 'out': f'{hf}.attention.output.dense'}
    table += convert.attention(names, ours + ('self_attention',), cfg, qkv_bias=True,
                               out_bias=True)
    table += convert.norm(f'{hf}.attention.output.LayerNorm',
                          ours + path('self_attention_block/norm'), d)
    table += convert.dense(f'{hf}.intermediate.dense', ours + path('mlp/wi'), d, f)
    table += convert.dense(f'{hf}.output.dense', ours + path('mlp/wo'), f, d)
    table += convert.norm(f'{hf}.output.LayerNorm', ours + path('mlp_block/norm'), d)
  table += convert.dense('cls.predictions.transform.dense', path('mlm_transform'), d, d)
  table += convert.norm('cls.predictions.transform.LayerNorm', path('mlm_norm'), d)
  table.append(as_is('cls.predictions.bias', path('mlm_bias'), (cfg.vocab_size,)))
  if cfg.num_classes:
    table += convert.dense('bert.pooler.dense', path('pooler'), d, d)
    table += convert.dense('cls.seq_relationship', path('classifier'), d, cfg.num_classes)
  return table


def tied(cfg: ModelConfig) -> list[convert.Tied]:
  del cfg
  return [convert.Tied('cls.predictions.decoder.weight',
                       lambda read: read('bert.embeddings.word_embeddings.weight')),
          convert.Tied('cls.predictions.decoder.bias',
                       lambda read: read('cls.predictions.bias'))]
