"""The data config: every field ``get_datasets`` reads, its default, and what it means.

``default_data_config()`` returns them all; training configs hold them under ``data``.

Source
  source ('synthetic')        'synthetic' | 'text' | 'parallel' | 'tfds'.
  synthetic_rule ('reverse')  how a synthetic target follows from its random string:
                              'copy' | 'reverse' | 'sort' (pairs, for translation and LMs);
                              classification data is labelled by the string's largest
                              symbol whatever the rule.
  synthetic_vocab (10)        number of symbols (<= 62), printed '0'-'9', 'a'-'z', 'A'-'Z';
                              the token ids are 5 specials + these symbols.
  synthetic_min_len (4), synthetic_max_len (16)   lengths of the random strings.
  synthetic_train_size (50_000), synthetic_eval_size (1_000)   examples in train and in
                              each of valid/test; every split is a deterministic function
                              of ``seed`` (train, valid and test use different streams).
  path (None)                 'text': a UTF-8 text file; 'parallel': a folder holding
                              ``{train,valid,test}.{src_lang,tgt_lang}`` (valid may also be
                              named validation/val/dev; train is required).
  src_lang (None), tgt_lang (None)   'parallel': file suffixes (default 'src' / 'tgt');
                              'tfds' translation: feature keys (default: the builder's
                              supervised keys, e.g. de -> en for wmt14_translate/de-en).
  reverse_translation (False) swap source and target (wmt14_translate/de-en -> en->de).
  valid_fraction (0.1)        'text': the last fraction of the characters is 'valid'
                              (nanoGPT's 90/10 split).
  tfds_name (None)            a TFDS catalog name, e.g. 'wmt14_translate/de-en', 'lm1b',
                              'tiny_shakespeare', 'glue/sst2'; prepared with
                              download_and_prepare(file_format='array_record').
  tfds_data_dir (None)        where TFDS data lives (default: ``data_dir``).
  tfds_text_key (None)        text feature for lm/mlm/classification (default: the first
                              of 'text', 'sentence', 'content').
  tfds_label_key ('label')    label feature for classification.
  data_dir (None)             where TFDS data (by default) and the token store go
                              (default: ``workdir/data``).

Tokenizer
  tokenizer ('synthetic')     'synthetic' | 'char' | 'sentencepiece' | 'pretrained'.
  tokenizer_dir (None)        where the tokenizer is saved / loaded (default:
                              ``workdir/tokenizer``); SentencePiece is trained on the train
                              split (source + target for translation: one shared
                              vocabulary) when no model is there yet.
  vocab_size (8000)           SentencePiece vocabulary size (a soft limit on small corpora).
  spm_model_type ('unigram')  'unigram' | 'bpe'.
  tokenizer_sample_chars (10_000_000)   SentencePiece trains on a random sample of about
                              this many characters of the train split (whole lines, drawn
                              by random access; all of it when the split is smaller).
  'pretrained' (tokenizer)    loads the tokenizer saved in ``tokenizer_dir`` (e.g. one that
                              `python -m transformer import` wrote) and never trains one.

The token store
  num_workers (0)             processes that tokenize a large corpus, chunk by chunk, into
                              the token store under ``data_dir/store`` (0: one per core);
                              small corpora are tokenized in the training process. Every
                              run after the first, and every other host, memory-maps the
                              store instead of tokenizing again; a corpus that changed on
                              disk, or another tokenizer, rebuilds it.

Sequences and batches
  max_len (64)                row length of every feature (for the LM: the block size).
  max_source_len (None), max_target_len (None)   translation overrides of max_len.
  lm_format ('auto')          'windows': nanoGPT random windows over the token stream
                              (no specials, no packing); 'sentences': each line / record is
                              bos+text -> text+eos, packed. 'auto': windows for
                              tokenizer='char', else sentences.
  pack (True)                 training rows pack several examples (first fit) with
                              ``*_segment_ids`` / ``*_positions`` features; False: one
                              example per row. Classification is never packed.
  overlong ('drop')           training examples longer than a row: 'drop' | 'truncate'.
                              Evaluation always truncates, so it covers every example.
  num_epochs (None)           None repeats the training data forever; an int stops after
                              that many epochs (the last batch is filled with zero rows).
  mlm_probability (0.15)      fraction of tokens selected for MLM prediction (80/10/10).

Batch keys (NumPy; ids int32, weights float32; B = global_batch_size // process_count):
  translation  inputs [B,S] (source + eos), decoder_inputs [B,T] (bos + target),
               targets [B,T] (target + eos), weights [B,T]; packed training batches also
               inputs_segment_ids, inputs_positions, targets_segment_ids,
               targets_positions (decoder_inputs share the targets').
  lm           inputs [B,T], targets [B,T] (next tokens), weights [B,T]; packed sentence
               batches also inputs_segment_ids, inputs_positions (targets share them).
  mlm          inputs [B,T] (masked), targets [B,T] (original), weights [B,T] (1 only at
               positions selected for prediction); packed: inputs_segment_ids/_positions.
  classification  inputs [B,T] (bos + text + eos), label [B], weights [B] (0 on padding rows).
Segment ids are 1, 2, 3... per example in a row and 0 on padding; positions restart at 0.
The same names go from the packer to the train step.
"""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Every field ``get_datasets`` reads, with its default (see the module docstring)."""
  return ml_collections.ConfigDict(dict(
      source='synthetic',
      synthetic_rule='reverse',
      synthetic_vocab=10,
      synthetic_min_len=4,
      synthetic_max_len=16,
      synthetic_train_size=50_000,
      synthetic_eval_size=1_000,
      path=ml_collections.config_dict.placeholder(str),
      src_lang=ml_collections.config_dict.placeholder(str),
      tgt_lang=ml_collections.config_dict.placeholder(str),
      reverse_translation=False,
      valid_fraction=0.1,
      tfds_name=ml_collections.config_dict.placeholder(str),
      tfds_data_dir=ml_collections.config_dict.placeholder(str),
      tfds_text_key=ml_collections.config_dict.placeholder(str),
      tfds_label_key='label',
      data_dir=ml_collections.config_dict.placeholder(str),
      tokenizer='synthetic',
      tokenizer_dir=ml_collections.config_dict.placeholder(str),
      vocab_size=8000,
      spm_model_type='unigram',
      tokenizer_sample_chars=10_000_000,
      num_workers=0,
      max_len=64,
      max_source_len=ml_collections.config_dict.placeholder(int),
      max_target_len=ml_collections.config_dict.placeholder(int),
      lm_format='auto',
      pack=True,
      overlong='drop',
      num_epochs=ml_collections.config_dict.placeholder(int),
      mlm_probability=0.15,
  ))
