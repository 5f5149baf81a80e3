"""The notebooks open: no placeholder repository or badge, an install cell that installs
from the checkout the notebook sits in (or stops with one line), the CPU in the test run."""

import json
import os

import pytest

from tests.helpers import REPO

NOTEBOOKS = sorted((REPO / 'notebooks').glob('*.ipynb'))


def code_cells(path):
  return [''.join(c['source']) for c in json.loads(path.read_text())['cells']
          if c['cell_type'] == 'code']


def test_no_placeholder_anywhere():
  assert len(NOTEBOOKS) == 4
  for path in [*NOTEBOOKS, REPO / 'README.md']:
    text = path.read_text()
    assert 'your-org' not in text and 'colab-badge' not in text, path.name


def run_install_cell(source, cwd, monkeypatch, installed: bool):
  """Runs the install cell in `cwd` with `%pip` recorded instead of run."""
  import importlib.util
  pip = []
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: object() if installed else None)
  code = source.replace('%pip install -q -e {checkout}', 'pip.append(f"install -q -e {checkout}")')
  exec(compile(code, 'install cell', 'exec'), {'pip': pip})
  return pip


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_the_install_cell_installs_from_its_checkout(path, monkeypatch, tmp_path):
  [install] = [c for c in code_cells(path) if '%pip' in c]
  assert code_cells(path)[0] == install               # before anything imports jax
  monkeypatch.setenv('TRANSFORMER_NOTEBOOK_CPU', '1')
  assert run_install_cell(install, REPO / 'notebooks', monkeypatch, installed=False) == [
      f'install -q -e {REPO}']
  assert run_install_cell(install, REPO / 'notebooks', monkeypatch, installed=True) == []
  assert os.environ['JAX_PLATFORMS'] == 'cpu'         # the test run's CPU
  with pytest.raises(SystemExit, match='^transformer is not installed and this notebook is '
                     'not inside a checkout of it: open the notebook from its checkout'):
    run_install_cell(install, tmp_path, monkeypatch, installed=False)


@pytest.mark.parametrize('path', NOTEBOOKS[2:], ids=lambda p: p.name)
def test_the_device_cell_simulates_cpu_devices_in_the_test_run(path, monkeypatch):
  devices = next(c for c in code_cells(path) if 'xla_force_host_platform_device_count' in c)
  monkeypatch.setenv('TRANSFORMER_NOTEBOOK_CPU', '1')
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  exec(compile(devices, 'device cell', 'exec'), {'os': os})
  assert os.environ['JAX_PLATFORMS'] == 'cpu'
  assert '--xla_force_host_platform_device_count=' in os.environ['XLA_FLAGS']
