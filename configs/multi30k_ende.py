"""English -> German on Multi30k (task 1, ~29k caption pairs), a local parallel corpus.

A small post-LN Transformer with the paper's recipe (shared SentencePiece vocabulary,
label smoothing 0.1, Adam 0.9/0.98, inverse-square-root schedule), sized for a CPU.
Data: `../shared/data/multi30k/{train,valid,test}.{en,de}` (cite Elliott et al., 2016), or
where that folder is absent the copy `python -m transformer download multi30k` fetches.
"""

from transformer.data.download import local_or_downloaded
from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'translation'
  c.model.update(d_model=256, num_heads=4, mlp_dim=1024, num_layers=3, max_len=128,
                 dropout_rate=0.1, attention_dropout_rate=0.0)
  # A small shared vocabulary: the output projection (2 * D * V FLOPs per target token)
  # is a large share of a small model's work.
  c.data.update(source='parallel', path=local_or_downloaded('../shared/data/multi30k', 'multi30k'), src_lang='en',
                tgt_lang='de', tokenizer='sentencepiece', vocab_size=5000,
                spm_model_type='unigram', max_len=48, pack=True, overlong='truncate')
  c.optim.update(schedule='paper', warmup_steps=800, lr_scale=1.0)
  c.train.update(batch_size=64, num_steps=3000, label_smoothing=0.1, log_every=50,
                 eval_every=500, checkpoint_every=250, max_to_keep=5, eval_bleu=True,
                 bleu_examples=200)   # BLEU on 200 validation sentences while training
  c.cpu_devices = 2   # on a CPU: two XLA devices of 32 rows each, as in the README's BLEU run
  return c
