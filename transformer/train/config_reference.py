"""Every config field with its default and meaning, read from where the field is defined.

A field's meaning is the comment that ends the line defining it (and the comment-only lines
that continue it):

  * `transformer/train/defaults.py`, `base_config()`: `c.seed = 0  # ...` and the
    `name=value,  # ...` entries of each section's `dict(...)`;
  * `transformer/config.py`, `ModelConfig`: `d_model: int = 512  # ...` (`config.model`);
  * `transformer/data/config.py`, `default_data_config()`: its `dict(...)` (`config.data`).

Continuation lines are the comment-only lines right below, indented past the field's name; a
comment at the field's own column (`# Tokenizer`) heads what follows instead.

The defaults are the values `base_config()` returns, so the reference and the config cannot
drift apart: a field added with its comment is documented, and one added without a comment
is reported by `undocumented()` (tests/test_config_reference.py fails on it).

    python -m transformer.train.config_reference             # the reference as text
    python -m transformer.train.config_reference --markdown > docs/config.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import pathlib
import sys
import textwrap
import tokenize
from typing import Any, Callable, Iterable

# base_config() calls these for whole sections: their fields are documented where they are.
_DELEGATES = {'model_block': 'model', 'default_data_config': 'data'}


@dataclasses.dataclass(frozen=True)
class Field:
  path: str          # e.g. 'train.num_steps'
  default: Any
  help: str          # '' when the field has no comment


def _comment_lines(source: str) -> dict[int, tuple[int, str, bool]]:
  """line number -> (comment column, comment text, whether the line is only a comment)."""
  lines = source.splitlines()
  found = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      row, col = token.start
      only = not lines[row - 1][:col].strip()
      found[row] = (col, token.string.lstrip('#').strip(), only)
  return found


def _doc_at(comments: dict[int, tuple[int, str, bool]], line: int, indent: int) -> str:
  """The trailing comment of `line` and the comment-only lines continuing it (indented
  past `indent`, the field's own column: a comment at that column starts something else)."""
  if line not in comments or comments[line][2]:
    return ''
  parts = [comments[line][1]]
  line += 1
  while line in comments and comments[line][2] and comments[line][0] > indent:
    parts.append(comments[line][1])
    line += 1
  return ' '.join(p for p in parts if p)


def _source(obj) -> tuple[ast.Module, dict]:
  path = pathlib.Path(inspect.getsourcefile(obj))
  text = path.read_text()
  return ast.parse(text), _comment_lines(text)


def _named(tree: ast.Module, kind, name: str):
  for node in ast.walk(tree):
    if isinstance(node, kind) and node.name == name:
      return node
  raise AssertionError(f'{name} not found')


def _dict_call(node: ast.AST) -> ast.Call | None:
  """The first `dict(...)` call inside `node` (a section's fields)."""
  for sub in ast.walk(node):
    if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == 'dict':
      return sub
  return None


def _keyword_docs(call: ast.Call, comments, prefix: str) -> dict[str, str]:
  return {f'{prefix}{k.arg}': _doc_at(comments, k.lineno, k.col_offset) for k in call.keywords if k.arg}


def model_docs() -> dict[str, str]:
  """`ModelConfig`'s field -> its comment."""
  from transformer.config import ModelConfig
  tree, comments = _source(ModelConfig)
  cls = _named(tree, ast.ClassDef, 'ModelConfig')
  return {s.target.id: _doc_at(comments, s.lineno, s.col_offset) for s in cls.body
          if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def data_docs() -> dict[str, str]:
  """`default_data_config()`'s field -> its comment."""
  from transformer.data import config as data_config
  tree, comments = _source(data_config)
  call = _dict_call(_named(tree, ast.FunctionDef, 'default_data_config'))
  return _keyword_docs(call, comments, '')


def field_docs() -> dict[str, str]:
  """Every field path of `base_config()` -> its comment ('' for none)."""
  from transformer.train import defaults
  tree, comments = _source(defaults)
  docs: dict[str, str] = {}
  delegated = {'model': model_docs, 'data': data_docs}
  for statement in _named(tree, ast.FunctionDef, 'base_config').body:
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Attribute)):
      continue
    name = statement.targets[0].attr
    value = statement.value
    if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
        and value.func.id in _DELEGATES):
      section = _DELEGATES[value.func.id]
      docs.update({f'{section}.{k}': v for k, v in delegated[section]().items()})
    elif (call := _dict_call(value)) is not None:
      docs.update(_keyword_docs(call, comments, f'{name}.'))
    else:
      docs[name] = _doc_at(comments, statement.lineno, statement.col_offset)
  return docs


def _leaves(config, prefix: str = '') -> Iterable[tuple[str, Any]]:
  import ml_collections
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def fields(config_fn: Callable | None = None) -> list[Field]:
  """Every field of `base_config()` (or `config_fn()`), in its order, with its comment."""
  from transformer.train.defaults import base_config
  config = (config_fn or base_config)()
  docs = field_docs()
  order = {path: i for i, path in enumerate(docs)}   # as defined (ConfigDict sorts keys)
  leaves = sorted(_leaves(config), key=lambda leaf: (order.get(leaf[0], len(order)), leaf[0]))
  return [Field(path, default, docs.get(path, '')) for path, default in leaves]


def undocumented(config_fn: Callable | None = None) -> list[str]:
  """The fields without a meaning: a comment to add where the field is defined."""
  return [f.path for f in fields(config_fn) if not f.help]


def _show(value: Any) -> str:
  return 'None' if value is None else repr(value)


def text() -> str:
  """The reference for `train.py --help`: one line per field."""
  rows = fields()
  width = max(len(f'{f.path}={_show(f.default)}') for f in rows)
  lines = []
  section = None
  for f in rows:
    head = f.path.split('.')[0] if '.' in f.path else ''
    if head != section:
      section = head
      lines.append(f'  [{head}]' if head else '  [top level]')
    head_text = f'  --config.{f.path + "=" + _show(f.default):<{width}}  '
    lines += textwrap.wrap(f.help, width=max(100, len(head_text) + 40),
                           initial_indent=head_text, subsequent_indent=' ' * len(head_text)) or [head_text.rstrip()]
  return '\n'.join(lines)


MARKDOWN_HEADER = """\
# Config reference

Generated by `python -m transformer.train.config_reference --markdown > docs/config.md` from
the comments where each field is defined (`transformer/train/defaults.py`,
`transformer/config.py` for `model`, `transformer/data/config.py` for `data`); do not edit by
hand. `python train.py --help` prints the same list. Override any field on the command line:
`python train.py --config configs/NAME.py --config.train.num_steps=100`.
"""


def markdown() -> str:
  rows = fields()
  out = [MARKDOWN_HEADER]
  section = None
  for f in rows:
    head = f.path.split('.')[0] if '.' in f.path else ''
    if head != section:
      section = head
      out += ['', f'## `{head}`' if head else '## Top level', '',
              '| field | default | meaning |', '|---|---|---|']
    meaning = f.help.replace('|', '\\|')
    default = _show(f.default).replace('|', '\\|')
    out.append(f'| `{f.path}` | `{default}` | {meaning} |')
  return '\n'.join(out) + '\n'


def main(argv: list[str]) -> int:
  missing = undocumented()
  if missing:
    print(f'error: config fields without a meaning: {", ".join(missing)} (add a trailing '
          'comment where each is defined)', file=sys.stderr)
    return 2
  print(markdown() if '--markdown' in argv else text(), end='' if '--markdown' in argv
        else '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
