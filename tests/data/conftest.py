"""Shared fixtures for the data tests: the real corpora in ../shared/data, if present."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'  # ../shared/data from the repo root
MULTI30K = SHARED_DATA / 'multi30k'
SHAKESPEARE = SHARED_DATA / 'tinyshakespeare' / 'input.txt'


def require(path: Path) -> Path:
  if not path.exists():
    pytest.skip(f'{path} is not available')
  return path


@pytest.fixture(scope='session')
def multi30k_workdir(tmp_path_factory):
  """A workdir with a SentencePiece model trained on Multi30k (built once per session)."""
  require(MULTI30K)
  return tmp_path_factory.mktemp('multi30k')


def multi30k_config(**overrides):
  from transformer.data import default_data_config
  c = default_data_config()
  c.source = 'parallel'
  c.path = str(MULTI30K)
  c.src_lang, c.tgt_lang = 'en', 'de'
  c.tokenizer = 'sentencepiece'
  c.vocab_size = 2000
  c.max_len = 64
  for k, v in overrides.items():
    setattr(c, k, v)
  return c
