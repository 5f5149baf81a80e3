"""Input pipelines: sources -> tokenizers -> the token store -> Grain batches.

    config.py       the data fields of a training config, with their defaults and meaning
    datasets.py     `get_datasets`: the entry point; `folders`, `prepare` (tokenizer, token
                    store) and `make_batches` (batches) are its steps
    sources.py      where text comes from (synthetic tasks, local files, TFDS catalogs)
    tokenizers.py   SentencePiece, characters, the synthetic alphabet
    store.py        a corpus tokenized once, on every core, into memory-mapped arrays
    pipeline.py     what a task needs (`Needs`), packing and padding into batches
    mlm.py          BERT's masking

Import from the modules themselves: this face loads nothing, so that the token store's
worker processes import only what they run (no Grain, no JAX).
"""
