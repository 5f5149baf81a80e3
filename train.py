"""Trains a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR]`.

Any config field can be overridden: `--config.train.num_steps=100`. Running again on the
same workdir resumes from its newest checkpoint, data position included.
"""

import pathlib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from transformer import experiment
from transformer.train import process
from transformer.train.loop import Trainer

_HERE = pathlib.Path(__file__).resolve().parent
_CONFIG = config_flags.DEFINE_config_file(
    'config', str(_HERE / 'configs' / 'default.py'), 'Experiment config file.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run folder (default: runs/<config file name>).')
_CACHE = flags.DEFINE_string(
    'compilation_cache', str(pathlib.Path('~/.cache/transformer/xla').expanduser()),
    "JAX's persistent compilation cache: a run that compiles what an earlier run compiled "
    "(same model, shapes and devices) loads it from here instead ('' to turn it off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO: keep the console to the progress bar and summaries
    # unless asked (--verbosity=0 restores INFO).
    logging.set_verbosity(logging.WARNING)
  if _CACHE.value and not jax.config.jax_compilation_cache_dir:  # the environment's wins
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
  config = _CONFIG.value
  config_path = pathlib.Path(flags.FLAGS['config'].config_filename)
  workdir = pathlib.Path(_WORKDIR.value or pathlib.Path('runs') / config_path.stem)
  process.setup(config)            # CPU devices and jax.distributed, before any device use
  workdir.mkdir(parents=True, exist_ok=True)
  metrics = Trainer(experiment.build(config, workdir)).run()
  print('final eval: ' + ', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main)
