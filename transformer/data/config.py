"""The data config: every field ``get_datasets`` reads, its default, and what it means.

``default_data_config()`` returns them all; training configs hold them under ``data``.

Each field's meaning is the comment beside it in ``default_data_config()`` (the one place it
is written: ``python train.py --help`` and docs/config.md read it from there).

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
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict(dict(
      # Source
      source='synthetic',           # 'synthetic' | 'text' | 'parallel' | 'tfds'
      synthetic_rule='reverse',     # how a synthetic target follows from its random string:
                                    # 'copy' | 'reverse' | 'sort' (classification data is
                                    # labelled by the string's largest symbol whatever the rule)
      synthetic_vocab=10,           # number of symbols (<= 62), printed '0'-'9', 'a'-'z',
                                    # 'A'-'Z'; the token ids are 5 specials + these symbols
      synthetic_min_len=4,          # shortest random string
      synthetic_max_len=16,         # longest random string
      synthetic_train_size=50_000,  # synthetic training examples (every split is a
                                    # deterministic function of seed, each its own stream)
      synthetic_eval_size=1_000,    # synthetic examples in each of valid and test
      path=placeholder(str),        # 'text': a UTF-8 text file (or an https:// URL, downloaded
                                    # once into ~/.cache/transformer/downloads); 'parallel': a
                                    # folder holding
                                    # {train,valid,test}.{src_lang,tgt_lang} (valid may also be
                                    # named validation/val/dev; train is required)
      src_lang=placeholder(str),    # 'parallel': source file suffix (default 'src'); 'tfds'
                                    # translation: source feature key (default: the builder's
                                    # supervised keys, e.g. de for wmt14_translate/de-en)
      tgt_lang=placeholder(str),    # the target's, as src_lang (default 'tgt')
      reverse_translation=False,    # swap source and target (wmt14_translate/de-en -> en->de)
      valid_fraction=0.1,           # 'text': the last fraction of the characters is 'valid'
                                    # (nanoGPT's 90/10 split)
      tfds_name=placeholder(str),   # a TFDS catalog name, e.g. 'wmt14_translate/de-en',
                                    # 'lm1b', 'tiny_shakespeare', 'glue/sst2'; prepared with
                                    # download_and_prepare(file_format='array_record')
      tfds_data_dir=placeholder(str),  # where TFDS data lives (default: data_dir)
      tfds_text_key=placeholder(str),  # text feature for lm/mlm/classification (default: the
                                       # first of 'text', 'sentence', 'content')
      tfds_label_key='label',       # label feature for classification
      data_dir=placeholder(str),    # where TFDS data (by default) and the token store go
                                    # (default: workdir/data)
      # Tokenizer
      tokenizer='synthetic',        # 'synthetic' | 'char' | 'sentencepiece' | 'pretrained'
                                    # (loads the tokenizer saved in tokenizer_dir, e.g. by
                                    # `python -m transformer import`, and never trains one)
      tokenizer_dir=placeholder(str),  # where the tokenizer is saved / loaded (default:
                                       # workdir/tokenizer); SentencePiece is trained on the
                                       # train split (source + target for translation: one
                                       # shared vocabulary) when no model is there yet
      vocab_size=8000,              # SentencePiece vocabulary size (a soft limit on small
                                    # corpora)
      spm_model_type='unigram',     # SentencePiece model: 'unigram' | 'bpe'
      tokenizer_sample_chars=10_000_000,  # SentencePiece trains on a random sample of about
                                          # this many characters of the train split (whole
                                          # lines; all of it when the split is smaller)
      # The token store
      num_workers=0,                # processes that tokenize a large corpus, chunk by chunk,
                                    # into the token store under data_dir/store (0: one per
                                    # core); small corpora are tokenized in the training
                                    # process; later runs and other hosts memory-map the store,
                                    # and a changed corpus or tokenizer rebuilds it
      # Sequences and batches
      max_len=64,                   # row length of every feature (for the LM: the block size)
      max_source_len=placeholder(int),  # translation: the source's row length (None: max_len)
      max_target_len=placeholder(int),  # translation: the target's row length (None: max_len)
      lm_format='auto',             # 'windows': nanoGPT random windows over the token stream
                                    # (no specials, no packing); 'sentences': each line /
                                    # record is bos+text -> text+eos, packed; 'auto': windows
                                    # for tokenizer='char', else sentences
      pack=True,                    # training rows pack several examples (first fit) with
                                    # *_segment_ids / *_positions features; False: one example
                                    # per row (classification is never packed)
      overlong='drop',              # training examples longer than a row: 'drop' | 'truncate'
                                    # (evaluation always truncates, so it covers every example)
      num_epochs=placeholder(int),  # None repeats the training data forever; an int stops
                                    # after that many epochs (the last batch is filled with
                                    # zero rows)
      mlm_probability=0.15,         # fraction of tokens selected for MLM prediction (80/10/10)
  ))
