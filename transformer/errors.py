"""The errors a user acts on, as opposed to bugs.

`train.py` and `python -m transformer` print a `UserError` as one line, `error: ...`, and
exit with status 2 (`--debug` shows the traceback); a `RunStopped` as one line with exit
status 3. Anything else is a bug and keeps its traceback.

Both subclass the built-in exceptions the library raised before (`ValueError`,
`FileNotFoundError`, `RuntimeError`), so code that catches those still does.
"""

import threading


class UserError(ValueError):
  """Something the user fixes in the config, the data, the workdir or the command line."""


class ConfigError(UserError):
  """An invalid or inconsistent configuration value."""


class DataError(UserError):
  """A corpus that is missing, empty, misaligned or not UTF-8."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the run needs is not there."""


class CheckpointError(UserError):
  """A workdir whose checkpoints cannot serve this run (wrong model, damaged, absent)."""


class RunStopped(RuntimeError):
  """The run stopped on purpose before its last step (e.g. a non-finite loss)."""


def typed_line(error: BaseException) -> str:
  """One readable line for an error told in another's words (why a checkpoint did not
  restore, what another process crashed of): its type and first line, without the handle
  of a C++ method that TensorStore's messages embed ('See full TensorStore details:
  <bound method ...>')."""
  import re
  text = (str(error).strip().splitlines() or [''])[0]
  text = re.sub(r'\s*See full TensorStore details:.*', '', text)
  text = re.sub(r'<bound method [^>]*>?', '', text).strip().rstrip('.')
  return f'{type(error).__name__}: {text[:200]}' if text else type(error).__name__


class HostLost(RunStopped):
  """Another process of a multi-host run died or became unreachable.

  This process can neither go on nor shut down cleanly (JAX's distributed shutdown waits
  for every process, then aborts natively), so the command lines leave with `os._exit`
  right after its line.
  """


# --- the command lines' side: one line per user error ---------------------------------------

def one_line(error: BaseException) -> str:
  """`error`'s message on one line (its type's name when it has none)."""
  return ' '.join(str(error).split()) or type(error).__name__


def report(error: BaseException, *, debug: bool = False) -> int:
  """Prints `error` for a user and returns the exit status (2, or 3 for a stopped run)."""
  import sys
  import traceback
  if debug:
    traceback.print_exception(error)
  prefix = 'stopped' if isinstance(error, RunStopped) else 'error'
  print(f'{prefix}: {one_line(error)}', file=sys.stderr, flush=True)
  return 3 if isinstance(error, RunStopped) else 2


_exiting = threading.Lock()   # held by the first lost-host exit: its line is the only one
_stopped_exit: list = []
_tell_others: list = []


def at_stopped_exit(fn):
  """`fn()` runs (errors ignored) right before `exit_stopped` leaves: what a `with` block
  would have released (a workdir's lease in a bucket). Returns what unregisters it."""
  _stopped_exit.append(fn)
  return lambda: _stopped_exit.remove(fn) if fn in _stopped_exit else None


def at_user_stop(tell):
  """`tell(message)` runs when this process stops on a user error, and the process then
  leaves at once (`exit_stopped`): peers.py tells a multi-process run's other processes,
  which would otherwise wait for this one in their next collective, and this one would
  wait for them in JAX's shutdown. (A stopped run, a non-finite loss, stops every process
  at the same step by itself, with status 3.)"""
  _tell_others.append(tell)


def exit_stopped(error: 'UserError | RunStopped', *, debug: bool = False):
  """Reports `error` and leaves at once with its status (3 for a stopped run, 2 for a user
  error), from any thread; a second caller (the main thread and peers.py's watcher may see
  the same loss) waits to be ended."""
  import logging
  import os
  import sys
  _exiting.acquire()
  code = report(error, debug=debug)
  for release in list(_stopped_exit):
    try:
      release()
    except Exception:   # noqa: BLE001 - leaving anyway; the line is out
      pass
  sys.stdout.flush()
  logging.shutdown()
  os._exit(code)   # skips jax.distributed.shutdown, which would abort waiting for the lost


def guarded(fn, *args, debug: bool = False) -> int:
  """`fn(*args)` (an int exit status or None), with user errors reported in one line."""
  try:
    return fn(*args) or 0
  except HostLost as error:
    exit_stopped(error, debug=debug)
  except (UserError, RunStopped) as error:
    if _tell_others and isinstance(error, UserError):
      for tell in _tell_others:
        tell(one_line(error))
      exit_stopped(error, debug=debug)
    return report(error, debug=debug)


def _config_flag_message(error: BaseException, argv: list[str]) -> str:
  """One line for what went wrong while absl parsed the flags and loaded the config."""
  import re

  from absl import flags
  text = ' '.join(str(error).replace('\\n', ' ').replace("\\'", "'").split())
  if len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1]
  if isinstance(error, flags.Error) and not isinstance(error, flags.IllegalFlagValueError):
    return f'{text} (--help lists the flags)'
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  if isinstance(error, (AttributeError, KeyError)) or suggestion:
    unknown = re.search(r"instead of \"([^\"]+)\"|^'?([\w.]+)'?", text)
    name = unknown and (unknown.group(1) or unknown.group(2))
    overrides = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
    culprits = [o for o in overrides if name and o.split('.')[-1] == name] or overrides[-1:]
    where = f'config field {culprits[0]}' if culprits else 'config field'
    hint = f'; did you mean {suggestion.group(1)!r}?' if suggestion else ''
    return (f'unknown {where}{hint} (python train.py --help lists every field)')
  if isinstance(error, OSError) and 'config file' in text:
    missing = re.findall(r"'([^']+\.py)'", text)
    reason = text.split(']')[-1].split(':')[0].strip() if ']' in text else text
    return f'cannot load the config file {missing[-1] if missing else ""}: {reason}'
  return text


def run_absl_main(main, define_flags, *, debug: bool = False):
  """`define_flags()` then `absl.app.run(main)`, with flag and config errors, and user
  errors raised by `main`, reported as one line (exit 2) instead of a traceback."""
  import sys

  from absl import app, flags
  try:
    define_flags()   # (config_flags applies --config.* overrides already here)
    argv = flags.FLAGS(sys.argv)
    if 'config' in flags.FLAGS:
      flags.FLAGS.config.to_dict()   # loads the config file: a missing one fails here
  except SystemExit:
    raise
  except Exception as error:   # noqa: BLE001 - flag parsing: every failure is the user's
    if debug:
      raise
    print(f'error: {_config_flag_message(error, sys.argv)}', file=sys.stderr, flush=True)
    return 2
  # Parsed once: config_flags defines its override flags while parsing.
  app.run(lambda argv: guarded(main, argv, debug=debug), flags_parser=lambda _: argv)
