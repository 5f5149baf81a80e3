"""Trains a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR]`.

Any config field can be overridden: `--config.train.num_steps=100`. Running again on the
same workdir resumes from its newest checkpoint, data position included.

`--compile_for v5e:4x4 [--plan_json P]` trains nothing: it compiles the config's train step
for that TPU slice on this host (libtpu: `pip install -e '.[tpu]'`), prints whether it fits
and a roofline estimate of its step time, and touches no workdir (see
transformer/train/plan.py).

A mistake in the config, the data, the workdir or the command line is reported as one line
(`error: ...`) with exit status 2; a run stopped on purpose (a loss that is not finite) as
one line with exit status 3. `--debug` shows their tracebacks; anything else is a bug and
always shows its traceback.
"""

import os
import pathlib
import sys
import textwrap

from transformer import errors

_HERE = pathlib.Path(__file__).resolve().parent


def main(argv):
  import jax
  from absl import flags, logging

  from transformer.train.loop import train_and_evaluate

  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments: {" ".join(argv[1:])} (flags are '
                           '--config, --workdir, --config.<section>.<field>=value)')
  if not flags.FLAGS['verbosity'].present:
    # Orbax logs every save at INFO: keep the console to the progress bar and summaries
    # unless asked (--verbosity=0 restores INFO).
    logging.set_verbosity(logging.WARNING)
  if flags.FLAGS.compile_for:
    # No persistent cache, the environment's included: the programs are for another
    # machine, and a CPU entry of the same name does not deserialize for a TPU compiler.
    jax.config.update('jax_enable_compilation_cache', False)
    return compile_for(flags.FLAGS.config, flags.FLAGS.compile_for, flags.FLAGS.plan_json,
                       flags.FLAGS.num_slices)
  cache = flags.FLAGS.compilation_cache
  if cache and not jax.config.jax_compilation_cache_dir:  # the environment's wins
    jax.config.update('jax_compilation_cache_dir', cache)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    # Every program, not only those compiling for over 1 s (JAX's default): a warm start
    # otherwise recompiles a dozen small ones (random keys, the matmul that measures the
    # CPU's peak, scalar ops), up to a quarter of a second each.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  config = flags.FLAGS.config
  config_path = pathlib.Path(flags.FLAGS['config'].config_filename)
  # A URL (gs://, s3://) stays a string: pathlib would fold its '//'.
  workdir = flags.FLAGS.workdir or pathlib.Path('runs') / config_path.stem
  metrics = train_and_evaluate(config, workdir)   # sets up the process, checks the config
  if metrics:
    print('final eval: ' + ', '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items())))


def compile_for(config, topology: str, plan_json: str | None, num_slices: int = 1) -> None:
  import json

  from transformer.train import plan as plan_lib

  if num_slices < 1:
    raise errors.UserError(f'--num_slices must be >= 1, not {num_slices}')
  plan = plan_lib.compile_plan(config, topology, num_slices)
  print(plan_lib.table(plan))
  warning = plan_lib.warning(plan)
  if warning:
    print(warning, file=sys.stderr)
  if plan_json:
    pathlib.Path(plan_json).write_text(json.dumps(plan, indent=1) + '\n')


def define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      'config', str(_HERE / 'configs' / 'default.py'), 'Experiment config file.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run folder (default: runs/<config file name>).')
  flags.DEFINE_string(
      'compilation_cache', str(pathlib.Path('~/.cache/transformer/xla').expanduser()),
      "JAX's persistent compilation cache: a run that compiles what an earlier run compiled "
      "(same model, shapes and devices) loads it from here instead ('' to turn it off).")
  flags.DEFINE_string(
      'compile_for', None, 'Train nothing: compile the train step for this TPU slice (e.g. '
      'v5e:4x4) and print whether it fits and its estimated step time (needs the tpu extra).')
  flags.DEFINE_string('plan_json', None, 'With --compile_for: write the plan here as JSON.')
  flags.DEFINE_integer('num_slices', 1, 'With --compile_for: that many slices joined over the '
                       "data-center network (the mesh's data axis spans them).")
  flags.DEFINE_bool('debug', False, 'Show the traceback of user errors too.')


HELP_FLAGS = ('--help', '-h', '--helpshort', '--helpfull')


def help_text() -> str:
  """The usage, the flags (from their definitions) and every config field (its default in
  `base_config()` and its meaning, from the comment beside it: `config_reference`)."""
  from absl import flags

  from transformer.train import config_reference
  before = set(flags.FLAGS)
  define_flags()
  usage = __doc__.strip().split('\n', 1)[0].split(': ', 1)[1].strip('`.')
  lines = [f'usage: {usage}', '', 'flags:']
  for name in [n for n in flags.FLAGS if n not in before]:   # in their definition order
    flag = flags.FLAGS[name]
    default = flag.default
    if not isinstance(default, (str, int, float, bool, type(None))):   # the config file flag
      default = flag.default_as_str.strip("'")
    if isinstance(default, str) and default.startswith(str(_HERE) + os.sep):
      default = os.path.relpath(default, _HERE)
    lines += textwrap.wrap(f'{flag.help} (default: {default!r})', width=100,
                           initial_indent=f'  --{name}: ', subsequent_indent=' ' * 6)
  lines += ['', 'config fields (--config.<section>.<field>=value overrides one; the defaults '
            'below are base_config()\'s, which the --config file changes; docs/config.md '
            'holds the same list):', config_reference.text()]
  return '\n'.join(lines)


if __name__ == '__main__':
  from transformer import platforms
  platforms.skip_absent_accelerators()
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print(help_text())
    sys.exit(0)
  sys.exit(errors.run_absl_main(main, define_flags, debug='--debug' in sys.argv[1:]
                                or bool(os.environ.get('TRANSFORMER_DEBUG'))))
