"""Input pipelines: sources -> tokenizers -> token ids -> Grain batches.

`get_datasets` (datasets.py) is the entry point; its config fields are documented with
their defaults in config.py; what a task asks of the data is a `Needs` (pipeline.py).
"""

from transformer.data.config import default_data_config
from transformer.data.datasets import Datasets, get_datasets
from transformer.data.mlm import mask_tokens
from transformer.data.pipeline import Needs, SequenceSpec, pad_rows, shift_right
from transformer.data.tokenizers import (CharTokenizer, SentencePieceTokenizer, Tokenizer,
                                         load_tokenizer, synthetic_tokenizer)

__all__ = [
    'default_data_config', 'Datasets', 'get_datasets', 'mask_tokens', 'Needs',
    'SequenceSpec', 'pad_rows', 'shift_right', 'CharTokenizer', 'SentencePieceTokenizer',
    'Tokenizer', 'load_tokenizer', 'synthetic_tokenizer',
]
