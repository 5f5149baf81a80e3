"""Models by Hugging Face Hub id: a cache laid out as huggingface_hub keeps it (refs,
snapshots, blobs), built from the tiny fixtures, read with HF_HUB_OFFLINE=1."""

import hashlib
import os
import subprocess
import sys

import pytest

from transformer.errors import MissingFileError
from transformer.hf import hub

from tests.helpers import REPO

FIXTURES = REPO / 'tests' / 'fixtures' / 'hf'


def hub_cache(hf_home, repo_id, fixture, *, revision='main', extra=()):
  """HF_HOME/hub/models--ORG--NAME with refs/REVISION -> a snapshot of `fixture`'s files
  (each a link to its blob, as huggingface_hub writes them); returns the commit hash."""
  storage = hf_home / 'hub' / ('models--' + repo_id.replace('/', '--'))
  files = sorted(p for p in (FIXTURES / fixture).iterdir())
  commit = hashlib.sha1(repr((repo_id, revision)).encode()).hexdigest()
  snapshot = storage / 'snapshots' / commit
  (storage / 'blobs').mkdir(parents=True, exist_ok=True)
  snapshot.mkdir(parents=True)
  for path in [*files, *extra]:
    data = path.read_bytes()
    blob = storage / 'blobs' / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
  (storage / 'refs').mkdir(exist_ok=True)
  (storage / 'refs' / revision).write_text(commit)
  return commit


def offline_env(hf_home):
  env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE='1')
  env.pop('HF_HUB_CACHE', None)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  return env


def test_ids_and_folders():
  assert hub.parse_id('tiny-org/tiny-llama') == ('tiny-org/tiny-llama', None)
  assert hub.parse_id('Helsinki-NLP/opus-mt-en-de@v1.0') == ('Helsinki-NLP/opus-mt-en-de',
                                                             'v1.0')
  assert hub.parse_id('gpt2') is None and hub.parse_id('a/b/c') is None
  assert hub.resolve(FIXTURES / 'llama') == FIXTURES / 'llama'     # a folder is itself
  with pytest.raises(MissingFileError, match='no model folder ./nope'):
    hub.resolve('./nope')


def test_load_and_import_by_id_from_an_offline_cache(tmp_path):
  hf_home = tmp_path / 'hf_home'
  hub_cache(hf_home, 'tiny-org/tiny-llama', 'llama')
  hub_cache(hf_home, 'tiny-org/tiny-llama', 'gpt2', revision='v2')
  script = ('import sys, numpy as np, jax, transformer.hf as hf\n'
            'a = hf.load("tiny-org/tiny-llama")\n'
            'b = hf.load(sys.argv[1])\n'
            'jax.tree.map(np.testing.assert_array_equal, a[1], b[1])\n'
            'print(type(a[0]).__name__, a[0].config.position,'
            ' hf.load("tiny-org/tiny-llama@v2")[0].config.position)\n')
  result = subprocess.run([sys.executable, '-c', script, str(FIXTURES / 'llama')], cwd=REPO,
                          env=offline_env(hf_home), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['DecoderLM', 'rope', 'learned']

  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'transformer', 'import', '--hf', 'tiny-org/tiny-llama',
       '--workdir', str(workdir)], cwd=REPO, env=offline_env(hf_home), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'imported tiny-org/tiny-llama into' in result.stdout
  assert (workdir / 'checkpoints' / '0').is_dir() and (workdir / 'tokenizer').is_dir()

  missing = subprocess.run(
      [sys.executable, '-m', 'transformer', 'import', '--hf', 'tiny-org/not-cached',
       '--workdir', str(tmp_path / 'other')], cwd=REPO, env=offline_env(hf_home),
      capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2, missing.stderr[-3000:]
  assert missing.stderr.startswith('error: tiny-org/not-cached is not in the Hugging Face '
                                   f'cache ({hf_home / "hub"}) and HF_HUB_OFFLINE is set'), (
                                       missing.stderr)
  assert len(missing.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'other').exists()
