"""The paper's base model on WMT 2014 English -> German (Table 3, "base").

TFDS `wmt14_translate/de-en` read in the en -> de direction, a shared 37000-token
SentencePiece vocabulary, about 25000 source + 25000 target tokens per step via packing
(400 rows of 64 tokens), warmup 4000, label smoothing 0.1, 100k steps; evaluate with beam 4,
alpha 0.6, the average of the last 5 checkpoints. Needs the TFDS download (not offline).
"""

from transformer.train.defaults import base_config


def get_config():
  c = base_config()
  c.task = 'translation'
  c.model.update(d_model=512, num_heads=8, mlp_dim=2048, num_layers=6, max_len=256,
                 dropout_rate=0.1, dtype='bfloat16')
  c.data.update(source='tfds', tfds_name='wmt14_translate/de-en', reverse_translation=False,
                src_lang='en', tgt_lang='de', tokenizer='sentencepiece', vocab_size=37_000,
                max_len=64, pack=True, overlong='drop')
  c.optim.update(schedule='paper', warmup_steps=4000)
  c.train.update(batch_size=400, num_steps=100_000, label_smoothing=0.1, log_every=100,
                 eval_every=5000, checkpoint_every=2000, max_to_keep=5, eval_bleu=True,
                 bleu_examples=0)
  return c
