"""The machinery every family shares: a Hugging Face folder's config and tensors, and the
tables that map its tensors onto our parameters and back.

A family (gpt2.py, bert.py, llama.py, marian.py) describes its checkpoint as a list of
`Tensor`s: one Hugging Face tensor, the parameter(s) of ours it holds and the two exact
conversions between them (transposes, reshapes, GPT-2's fused query/key/value split), plus
`Tied` tensors that a checkpoint may repeat (tied embeddings, Marian's fixed sinusoids)
and that must then equal what they repeat. Reading and writing are the same table walked
both ways, so ours -> Hugging Face -> ours is exact.

Tensors are read with the `safetensors` package's NumPy API (no torch), lazily, from one
`model.safetensors` or from the shards a `model.safetensors.index.json` names; bfloat16
tensors (which NumPy cannot name) are read from the file's bytes with `ml_dtypes`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
import struct
from typing import Any, Callable, Iterable, Sequence

import ml_dtypes
import numpy as np

from transformer.errors import CheckpointError, ConfigError, MissingFileError

Path = tuple[str, ...]          # a parameter's path in our tree, e.g. ('decoder', 'layer_0', ...)
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One checkpoint tensor (`name`, `shape`) holding the parameters at `paths`."""
  name: str
  shape: tuple[int, ...]
  paths: tuple[Path, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tied:
  """A tensor a checkpoint may also store (`name`) that repeats `value(read)` (`read`
  fetches another checkpoint tensor by name): checked when present, never written."""
  name: str
  value: Callable[[Callable[[str], np.ndarray]], np.ndarray]
  exact: bool = True          # False: equal up to float32 rounding (recomputed tables)


def path(*parts: str) -> Path:
  """'decoder/layer_0/mlp' style parts -> a path tuple."""
  return tuple(p for part in parts for p in part.split('/'))


def as_is(name: str, where: Path, shape: Sequence[int]) -> Tensor:
  """A tensor that is our parameter unchanged (embeddings, norms, biases)."""
  return Tensor(name, tuple(shape), (where,), lambda x: (x,), lambda x: x)


def reshaped(name: str, where: Path, hf_shape: Sequence[int], our_shape: Sequence[int]
             ) -> Tensor:
  """A tensor stored with another shape (e.g. a [N * H] bias that is ours [N, H])."""
  hf_shape, our_shape = tuple(hf_shape), tuple(our_shape)
  return Tensor(name, hf_shape, (where,), lambda x: (x.reshape(our_shape),),
                lambda x: x.reshape(hf_shape))


def linear(name: str, where: Path, in_dims: Sequence[int], out_dims: Sequence[int]) -> Tensor:
  """A torch `nn.Linear` weight [out, in] that is our kernel [*in_dims, *out_dims]."""
  n_in, n_out = math.prod(in_dims), math.prod(out_dims)
  return Tensor(name, (n_out, n_in), (where,),
                lambda x: (x.T.reshape(*in_dims, *out_dims),),
                lambda k: k.reshape(n_in, n_out).T)


def conv1d(name: str, where: Path, in_dims: Sequence[int], out_dims: Sequence[int]) -> Tensor:
  """A GPT-2 `Conv1D` weight [in, out] that is our kernel [*in_dims, *out_dims]."""
  n_in, n_out = math.prod(in_dims), math.prod(out_dims)
  return Tensor(name, (n_in, n_out), (where,), lambda x: (x.reshape(*in_dims, *out_dims),),
                lambda k: k.reshape(n_in, n_out))


def fused(name: str, wheres: Sequence[Path], lead: Sequence[int], parts: Sequence[int],
          our_shape: Sequence[int]) -> Tensor:
  """Several of our parameters concatenated on the last axis (GPT-2's c_attn: query, key
  and value), each [*lead, part] there and [*our_shape] here."""
  our_shape, lead = tuple(our_shape), tuple(lead)
  cuts = np.cumsum(parts)[:-1]

  def to_ours(x):
    return tuple(p.reshape(our_shape) for p in np.split(x, cuts, axis=-1))

  def to_hf(*ours):
    return np.concatenate([o.reshape(*lead, -1) for o in ours], axis=-1)
  return Tensor(name, (*lead, sum(parts)), tuple(wheres), to_ours, to_hf)


# --- the folder ----------------------------------------------------------------------------

def read_config(folder: pathlib.Path) -> dict[str, Any]:
  config_path = folder / CONFIG_FILE
  if not folder.is_dir():
    raise MissingFileError(f'{folder} is not a folder: give a Hugging Face model folder '
                           f'(config.json and *.safetensors)')
  if not config_path.is_file():
    raise MissingFileError(f'{folder} has no {CONFIG_FILE}: is it a Hugging Face model '
                           'folder?')
  try:
    return json.loads(config_path.read_text())
  except json.JSONDecodeError as error:
    raise ConfigError(f'{config_path} is not valid JSON ({error})') from None


def _read_bfloat16(file: pathlib.Path, name: str) -> np.ndarray:
  """A BF16 tensor straight from the file (safetensors: an 8-byte header length, a JSON
  header with each tensor's byte range, then the data)."""
  with open(file, 'rb') as f:
    header_length = struct.unpack('<Q', f.read(8))[0]
    entry = json.loads(f.read(header_length))[name]
    begin, end = entry['data_offsets']
    f.seek(8 + header_length + begin)
    data = f.read(end - begin)
  return np.frombuffer(data, ml_dtypes.bfloat16).reshape(entry['shape'])


class TensorFile:
  """The tensors of a folder, by name, read on demand; remembers which were read."""

  def __init__(self, folder: pathlib.Path, rename: Callable[[str], str] = lambda n: n):
    from safetensors import safe_open
    self.folder = folder
    index = folder / INDEX_FILE
    if index.is_file():
      files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    elif (folder / WEIGHTS_FILE).is_file():
      files = [WEIGHTS_FILE]
    else:
      found = sorted(p.name for p in folder.glob('*.safetensors'))
      if not found:
        others = sorted(p.name for p in folder.glob('*.bin')) + sorted(
            p.name for p in folder.glob('*.h5')) + sorted(p.name for p in folder.glob('*.msgpack'))
        hint = (f' (it has {", ".join(others)}: convert those to safetensors first, e.g. '
                'with transformers\' save_pretrained)') if others else ''
        raise MissingFileError(f'{folder} has no *.safetensors weights{hint}')
      files = found
    self._where: dict[str, tuple[pathlib.Path, str, Any]] = {}
    for file in files:
      handle = safe_open(str(folder / file), framework='numpy')
      for stored in handle.keys():
        self._where[rename(stored)] = (folder / file, stored, handle)
    self.used: set[str] = set()

  def names(self) -> set[str]:
    return set(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    _, stored, handle = self._where[name]
    return tuple(handle.get_slice(stored).get_shape())

  def read(self, name: str) -> np.ndarray:
    file, stored, handle = self._where[name]
    self.used.add(name)
    if handle.get_slice(stored).get_dtype() == 'BF16':
      return _read_bfloat16(file, stored)
    return handle.get_tensor(stored)


def find(tensors: TensorFile, name: str, prefix: str) -> str | None:
  """The stored name of `name`: as written by the head model (e.g. 'transformer.h.0...'),
  or without the base model's prefix, as the bare base model saves it."""
  if name in tensors:
    return name
  if prefix and name.startswith(prefix) and name[len(prefix):] in tensors:
    return name[len(prefix):]
  return None


def read_params(tensors: TensorFile, table: Iterable[Tensor], tied: Iterable[Tied],
                prefix: str, ignored: Sequence[str], dtype: Any) -> dict[Path, np.ndarray]:
  """Our flat parameters {path: array} from the checkpoint, every tensor checked: a missing
  or mis-shaped one names itself, and so does one the table does not know."""
  params: dict[Path, np.ndarray] = {}
  for entry in table:
    stored = find(tensors, entry.name, prefix)
    if stored is None:
      raise CheckpointError(f'{tensors.folder}: tensor {entry.name!r} is missing (expected '
                            f'shape {list(entry.shape)})')
    if tensors.shape(stored) != entry.shape:
      raise CheckpointError(f'{tensors.folder}: tensor {entry.name!r} has shape '
                            f'{list(tensors.shape(stored))}, expected {list(entry.shape)}')
    value = tensors.read(stored).astype(dtype, copy=False)
    for where, ours in zip(entry.paths, entry.to_ours(value)):
      params[where] = ours
  read = lambda name: tensors.read(find(tensors, name, prefix)).astype(np.float32)
  for repeat in tied:
    stored = find(tensors, repeat.name, prefix)
    if stored is None:
      continue
    value, expected = read(repeat.name), repeat.value(read)
    same = (np.array_equal(value, expected) if repeat.exact
            else value.shape == expected.shape and np.allclose(value, expected, atol=1e-5))
    if not same:
      raise ConfigError(f'{tensors.folder}: tensor {repeat.name!r} differs from the one it '
                        'repeats in this architecture (e.g. an untied output layer), which '
                        'our model cannot hold')
  unknown = sorted(n for n in tensors.names() - tensors.used
                   if not any(re.fullmatch(pattern, n) for pattern in ignored))
  if unknown:
    listed = ', '.join(unknown[:4]) + (f' and {len(unknown) - 4} more' if len(unknown) > 4
                                       else '')
    raise ConfigError(f'{tensors.folder}: tensors with no place in our model: {listed}')
  return params


def write_tensors(params: dict[Path, np.ndarray], table: Iterable[Tensor]
                  ) -> dict[str, np.ndarray]:
  """The checkpoint's tensors from our flat parameters; every parameter must be used."""
  out, used = {}, set()
  for entry in table:
    value = np.asarray(entry.to_hf(*(np.asarray(params[w]) for w in entry.paths)))
    if value.shape != entry.shape:
      raise ValueError(f'{entry.name}: made shape {value.shape}, expected {entry.shape}')
    out[entry.name] = np.ascontiguousarray(value)
    used.update(entry.paths)
  left = sorted('/'.join(p) for p in set(params) - used)
  if left:
    raise ConfigError(f'parameters with no place in the Hugging Face checkpoint: {left[:4]}')
  return out


def require(hf: dict, key: str, allowed: Iterable[Any], default: Any, family: str,
            what: str = '') -> Any:
  """`hf[key]` (or `default`), which must be one of `allowed`; else one line naming it."""
  value = hf.get(key, default)
  allowed = list(allowed)
  if value not in allowed:
    raise ConfigError(f'{family}: {key}={value!r} is not supported{what}')
  return value


def token_id(hf: dict, key: str, vocab_size: int) -> int | None:
  """An id field of config.json: the first of a list (Llama 3 lists several eos ids), None
  when absent or outside the vocabulary."""
  value = hf.get(key)
  if isinstance(value, list):
    value = value[0] if value else None
  return value if isinstance(value, int) and 0 <= value < vocab_size else None


# --- pieces several families share --------------------------------------------------------

def dense(name: str, where: Path, features_in: int, features_out: int, bias: bool = True
          ) -> list[Tensor]:
  """A torch `nn.Linear` (weight [out, in], bias [out]) that is our `nn.Dense`."""
  out = [linear(f'{name}.weight', where + ('kernel',), (features_in,), (features_out,))]
  if bias:
    out.append(as_is(f'{name}.bias', where + ('bias',), (features_out,)))
  return out


def norm(name: str, where: Path, width: int, bias: bool = True) -> list[Tensor]:
  """A LayerNorm (weight, bias) or RMSNorm (weight) that is ours (scale, bias)."""
  out = [as_is(f'{name}.weight', where + ('scale',), (width,))]
  if bias:
    out.append(as_is(f'{name}.bias', where + ('bias',), (width,)))
  return out


def attention(names: dict[str, str], where: Path, cfg, *, qkv_bias: bool, out_bias: bool
              ) -> list[Tensor]:
  """Separate `nn.Linear` query, key, value and output projections (BERT, Llama, Marian)
  that are our `MultiHeadAttention`'s [D, N, H] / [N, H, D] kernels."""
  d, n, h = cfg.d_model, cfg.num_heads, cfg.resolved_head_dim
  k = cfg.resolved_num_kv_heads
  out = []
  for role, heads in (('query', n), ('key', k), ('value', k)):
    out.append(linear(f'{names[role]}.weight', where + (role, 'kernel'), (d,), (heads, h)))
    if qkv_bias:
      out.append(reshaped(f'{names[role]}.bias', where + (role, 'bias'), (heads * h,),
                          (heads, h)))
  out.append(linear(f'{names["out"]}.weight', where + ('out', 'kernel'), (n, h), (d,)))
  if out_bias:
    out.append(as_is(f'{names["out"]}.bias', where + ('out', 'bias'), (d,)))
  return out


def activation(value: str, family: str) -> str:
  """Hugging Face's activation names -> ours ('gelu' there is the exact, erf form)."""
  names = {'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu', 'gelu_fast': None,
           'gelu': 'gelu_exact', 'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
  ours = names.get(value)
  if ours is None:
    raise ConfigError(f'{family}: activation {value!r} is not supported (we have GELU, '
                      'its tanh approximation, ReLU and SiLU)')
  return ours


def hf_activation(ours: str, family: str, swish_name: str = 'silu') -> str:
  """Ours -> the name Hugging Face's configs use."""
  names = {'gelu': 'gelu_new', 'gelu_exact': 'gelu', 'relu': 'relu', 'silu': swish_name}
  if ours not in names:
    raise ConfigError(f'activation={ours!r} has no {family} equivalent')
  return names[ours]


def check_representable(cfg, family: str, **required) -> None:
  """One line naming every field of `cfg` that `family` cannot express."""
  wrong = [f'{k}={getattr(cfg, k)!r} (needs {v!r})' for k, v in required.items()
           if getattr(cfg, k) != v]
  if wrong:
    raise ConfigError(f'this model cannot be saved as {family}: ' + ', '.join(wrong))
