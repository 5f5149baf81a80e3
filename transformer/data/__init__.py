"""Input pipelines: sources -> tokenizers -> the token store -> Grain batches.

`get_datasets` (datasets.py) is the entry point; its config fields are documented with
their defaults in config.py; what a task asks of the data is a `Needs` (pipeline.py);
store.py tokenizes a corpus once, on every core, into memory-mapped arrays.

Names load on first use, so that the token store's worker processes import only what
they run (no Grain, no JAX).
"""

import importlib

_EXPORTS = {
    'default_data_config': 'config', 'Datasets': 'datasets', 'get_datasets': 'datasets',
    'mask_tokens': 'mlm', 'Needs': 'pipeline', 'SequenceSpec': 'pipeline',
    'pad_rows': 'pipeline', 'shift_right': 'pipeline', 'CharTokenizer': 'tokenizers',
    'SentencePieceTokenizer': 'tokenizers', 'Tokenizer': 'tokenizers',
    'load_tokenizer': 'tokenizers', 'synthetic_tokenizer': 'tokenizers',
}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)


__all__ = list(_EXPORTS)
