"""`train.py --help` and docs/config.md: every config field, its default and its meaning,
read from the comments where the fields are defined."""

import subprocess
import sys

from tests.helpers import REPO
from transformer.train import config_reference
from transformer.train.defaults import base_config


def test_every_field_has_a_meaning():
  assert config_reference.undocumented() == [], (
      'add a trailing comment where each of these config fields is defined')
  paths = [f.path for f in config_reference.fields()]
  assert len(paths) == len(set(paths))
  documented = config_reference.field_docs()
  assert set(documented) == set(paths), set(documented) ^ set(paths)


def test_a_field_without_a_comment_is_reported():
  def with_new_field():
    config = base_config()
    config.train.profile_steps_without_doc = 0
    return config
  assert config_reference.undocumented(with_new_field) == ['train.profile_steps_without_doc']


def test_comments_and_their_continuations():
  comments = config_reference._comment_lines(
      "x = dict(\n"
      "    a=1,   # first line\n"
      "           # and its continuation\n"
      "    # a heading at the field's column\n"
      "    b=2,\n"
      ")\n")
  assert config_reference._doc_at(comments, 2, 4) == 'first line and its continuation'
  assert config_reference._doc_at(comments, 5, 4) == ''
  docs = dict((f.path, f) for f in config_reference.fields())
  assert docs['train.num_steps'].default == 10_000
  assert docs['model.d_model'].help == 'D, the residual stream width'
  assert 'token store' in docs['data.num_workers'].help        # a continued comment
  assert docs['model.num_kv_heads'].default is None


def test_docs_config_md_is_current():
  written = (REPO / 'docs' / 'config.md').read_text()
  assert written == config_reference.markdown(), (
      'docs/config.md is stale: python -m transformer.train.config_reference --markdown '
      '> docs/config.md')


def test_train_py_help_lists_flags_and_fields():
  result = subprocess.run([sys.executable, 'train.py', '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  for flag in ('--config:', '--workdir:', '--debug:', '--compilation_cache:'):
    assert flag in out
  assert '--config.train.num_steps=10000' in out
  assert '--config.model.d_model=512' in out and 'residual stream width' in out
  for field in config_reference.fields():
    assert f'--config.{field.path}=' in out, field.path
