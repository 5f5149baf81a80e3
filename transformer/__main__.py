"""Command line for trained runs.

    python -m transformer translate --workdir DIR < src.txt > hyp.txt
    python -m transformer generate  --workdir DIR --prompt "..." [--max_new_tokens N]
    python -m transformer evaluate  --workdir DIR [--split test] [--average_last N]
                                    [--data path=FILE ...]
    python -m transformer download  multi30k       (into the cache its config reads)
    python -m transformer import    --hf ORG/NAME[@REVISION] | HF_MODEL_DIR --workdir DIR
                                    [--config FILE.py]

A mistake (no checkpoint, the wrong kind of run, input that is not UTF-8, an option out of
range) is one line on stderr and exit status 2 (`--debug` shows the traceback); input
longer than the model reads, or holding characters its tokenizer cannot represent, is a
warning (`--strict`: an error).
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', required=True, help='the run folder train.py wrote')
  parser.add_argument('--debug', action='store_true',
                      help='show the traceback of errors that are reported in one line')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the newest)')
  parser.add_argument('--average_last', type=int, default=1,
                      help='average the parameters of the newest N checkpoints')


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m transformer', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)

  translate = commands.add_parser('translate', help='translate stdin lines to stdout')
  _add_common(translate)
  translate.add_argument('--beam_size', type=int, default=None,
                         help="beam width (1 = greedy; default: the run's config, 4)")
  translate.add_argument('--alpha', type=float, default=None, help='length penalty exponent')
  translate.add_argument('--batch_size', type=int, default=64)
  translate.add_argument('--strict', action='store_true',
                         help='a line longer than the model reads, or with characters the '
                         'tokenizer cannot represent, is an error, not a warning')

  generate = commands.add_parser('generate', help='continue a prompt with a language model')
  _add_common(generate)
  generate.add_argument('--prompt', required=True)
  generate.add_argument('--max_new_tokens', type=int, default=200)
  generate.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  generate.add_argument('--top_k', type=int, default=None)
  generate.add_argument('--top_p', type=float, default=None)
  generate.add_argument('--seed', type=int, default=0)
  generate.add_argument('--num_samples', type=int, default=1)
  generate.add_argument('--strict', action='store_true',
                        help='a prompt longer than the model reads, or with characters the '
                        'tokenizer cannot represent, is an error, not a warning')

  evaluate = commands.add_parser('evaluate', help='loss, perplexity (and BLEU) on a split')
  _add_common(evaluate)
  evaluate.add_argument('--split', default='valid', help="'valid' or 'test'")
  evaluate.add_argument('--beam_size', type=int, default=None)
  evaluate.add_argument('--alpha', type=float, default=None)
  evaluate.add_argument('--bleu_examples', type=int, default=0, help='0 = the whole split')
  evaluate.add_argument('--data', action='append', default=[], metavar='FIELD=VALUE',
                        help="a config.data field for this evaluation, e.g. --data "
                        "source=text --data path=corpus.txt (repeatable)")

  download = commands.add_parser(
      'download', help='fetch a corpus into the download cache, where its config finds it')
  download.add_argument('corpus', help='multi30k')
  download.add_argument('--debug', action='store_true',
                        help='show the traceback of errors that are reported in one line')

  importer = commands.add_parser(
      'import', help='a Hugging Face model folder (GPT-2, BERT, Llama, Mistral, Qwen2, '
      'Marian) -> a run folder')
  importer.add_argument('--hf', required=True,
                        help='a Hugging Face Hub model id, ORG/NAME[@REVISION] (downloaded '
                        'through huggingface_hub into its cache, HF_HOME), or a folder '
                        'holding config.json, *.safetensors and the tokenizer')
  importer.add_argument('--workdir', required=True, help='the run folder to create')
  importer.add_argument('--config', default=None,
                        help="a training config file whose data, optim and train sections "
                        "the run takes (default: the defaults, a fine-tuning schedule)")
  importer.add_argument('--debug', action='store_true',
                        help='show the traceback of errors that are reported in one line')
  return parser


# Options that must be at least this (None: not given, the run's config decides).
_AT_LEAST = {'beam_size': 1, 'batch_size': 1, 'max_new_tokens': 1, 'num_samples': 1,
             'top_k': 1, 'average_last': 1, 'step': 0, 'bleu_examples': 0, 'alpha': 0,
             'temperature': 0}


def _check_options(args) -> None:
  """Options out of range are one line, before anything is loaded."""
  from transformer.errors import UserError
  for name, least in _AT_LEAST.items():
    value = getattr(args, name, None)
    if value is not None and value < least:
      raise UserError(f'--{name} {value}: must be at least {least}')
  top_p = getattr(args, 'top_p', None)
  if top_p is not None and not 0 < top_p <= 1:
    raise UserError(f'--top_p {top_p}: must be in (0, 1]')


def _decode_settings(run, args) -> dict:
  decode_cfg = run.config.decode
  return dict(beam_size=decode_cfg.beam_size if args.beam_size is None else args.beam_size,
              alpha=decode_cfg.alpha if args.alpha is None else args.alpha,
              max_extra_len=decode_cfg.max_extra_len)


def _evaluate(run, args) -> dict:
  """Loss, accuracy, perplexity and the task's decoded metrics (BLEU) of the run's
  parameters on a split, on one device."""
  from transformer import storage
  from transformer.data.datasets import get_datasets
  from transformer.errors import UserError
  from transformer.tasks import DecodeSettings
  from transformer.train.evaluation import Evaluator
  from transformer.train.strategy import JitStrategy

  config, experiment = run.config, run.experiment
  _set_data_fields(config, args.data)
  if config.data.source == 'synthetic' and config.data.tokenizer != 'synthetic':
    raise UserError(
        f'{run.workdir} has no evaluation data (config.data.source is \'synthetic\', a task '
        f'its {config.data.tokenizer} tokenizer was not made for; an imported run): set '
        "config.data.source ('text' | 'parallel' | 'tfds') and config.data.path (or "
        'config.data.tfds_name), e.g. `python -m transformer evaluate --workdir '
        f'{run.workdir} --data source=text --data path=FILE`, or import with --config FILE '
        'whose data section names the corpus')
  datasets = get_datasets(config.data, experiment.task.data_needs(config.data),
                          workdir=run.workdir, local_dir=storage.local_dir(run.workdir),
                          global_batch_size=config.train.batch_size,
                          seed=config.seed,
                          eval_batch_size=config.train.eval_batch_size or None)
  strategy = JitStrategy(experiment.mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn)
  config.train.bleu_examples = args.bleu_examples
  evaluator = Evaluator(experiment.task, experiment.model, datasets, strategy, config.train,
                        DecodeSettings(**_decode_settings(run, args)))
  return evaluator.evaluate(run.params['params'], args.split, decode=True)


def _set_data_fields(config, assignments: list[str]) -> None:
  """`--data FIELD=VALUE` into config.data (a Python literal, or else a string)."""
  import ast

  from transformer.errors import UserError
  for assignment in assignments:
    name, sep, text = assignment.partition('=')
    if not sep or name not in config.data:
      raise UserError(f'--data {assignment}: expected FIELD=VALUE with a config.data field '
                      '(python train.py --help lists them)')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if not isinstance(value, str) and config.data.get_type(name) is str:
      value = text
    try:
      config.data[name] = value
    except TypeError as error:
      raise UserError(f'--data {assignment}: {error}') from None


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _overlong(what: str, tokens: int, limit: int, strict: bool, reads: str) -> None:
  """A warning (or with --strict an error) for input longer than the model reads."""
  from transformer.errors import UserError
  message = f'{what} is {tokens} tokens; the model reads {limit} (max_len): {reads}'
  if strict:
    raise UserError(message + ' (without --strict this is a warning)')
  _warn(message)


def _unrepresentable(tokenizer, texts: list[str], what: str, strict: bool) -> list[str]:
  """Warns (or with `strict` refuses) about characters the tokenizer cannot represent,
  naming them and the lines they touch; returns the texts to use (a tokenizer without an
  unknown id cannot encode them: they are dropped)."""
  from transformer.errors import DataError, UserError

  def unknown(char: str) -> bool:
    try:
      ids = tokenizer.encode(char)
    except DataError:
      return True
    return tokenizer.unk_id is not None and tokenizer.unk_id in ids

  chars = sorted({c for text in texts for c in text if c not in '\r\n'})
  missing = {c for c in chars if unknown(c)}
  if not missing:
    return texts
  touched = sum(any(c in missing for c in text) for text in texts)
  shown = ', '.join(repr(c) for c in sorted(missing)[:8]) + (', ...' if len(missing) > 8
                                                             else '')
  lines = f' in {touched} of {len(texts)} lines' if what == 'stdin' else ''
  fate = ('they become the unknown token' if tokenizer.unk_id is not None
          else 'they are dropped')
  message = (f'{what}: {len(missing)} distinct character(s) the tokenizer cannot represent '
             f'({shown}){lines}')
  if strict:
    raise UserError(message + ' (without --strict this is a warning)')
  _warn(f'{message}; {fate} (--strict makes this an error)')
  if tokenizer.unk_id is None:
    texts = [''.join(c for c in text if c not in missing) for text in texts]
  return texts


def _read_lines() -> list[str]:
  """stdin's lines as UTF-8; a line that is not names itself."""
  from transformer.errors import UserError
  lines = []
  for number, raw in enumerate(sys.stdin.buffer.read().splitlines(), 1):
    try:
      lines.append(raw.decode('utf-8'))
    except UnicodeDecodeError as error:
      raise UserError(f'stdin line {number} is not valid UTF-8 ({error.reason} at byte '
                      f'{error.start}): convert the input to UTF-8') from None
  if not any(line.strip() for line in lines):
    raise UserError('no input: pipe source sentences, one per line, into stdin')
  return lines


def _import(args) -> int:
  from transformer.hf.run_folder import import_run
  workdir = import_run(args.hf, args.workdir, args.config)
  print(f'imported {args.hf} into {workdir}: {_next_command(workdir)}; fine-tune with '
        f'`python train.py --config {workdir}/config.py --workdir {workdir} '
        '--config.data.source=... --config.data.path=...`')
  return 0


def _next_command(workdir) -> str:
  """What to run next with an imported run of this task."""
  import json
  import pathlib
  task = json.loads((pathlib.Path(workdir) / 'config.json').read_text())['task']
  if task == 'translation':
    return f'try `echo "..." | python -m transformer translate --workdir {workdir}`'
  if task == 'lm':
    return f'try `python -m transformer generate --workdir {workdir} --prompt "..."`'
  return (f'score it with `python -m transformer evaluate --workdir {workdir} --data '
          'source=text --data path=FILE`')


def _run(args) -> int:
  from transformer import inference, models
  from transformer.train.trained_run import load_run

  _check_options(args)
  if args.command == 'import':
    return _import(args)
  if args.command == 'download':
    from transformer.data import download
    folder = download.download_corpus(args.corpus)
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))
    print(f'{args.corpus}: {", ".join(files)} in {folder}')
    return 0
  run = load_run(args.workdir, step=args.step, average_last=args.average_last, report=_warn)
  if len(run.steps) < args.average_last:
    _warn(f'--average_last {args.average_last}: the run has {len(run.steps)} checkpoints up '
          f'to the chosen step; averaged those (steps {", ".join(map(str, run.steps))})')
  max_len = run.model.config.max_len
  if args.command == 'translate':
    lines = _read_lines()
    if isinstance(run.model, models.Transformer):   # (else translate_texts says what it is)
      lines = _unrepresentable(run.tokenizer, lines, 'stdin', args.strict)
    for number, line in enumerate(lines, 1):
      tokens = len(run.tokenizer.encode(line)) + 1   # + eos
      if tokens > max_len:
        _overlong(f'stdin line {number}', tokens, max_len, args.strict,
                  f'translating its first {max_len - 1} tokens')
    outputs = inference.translate_texts(run.model, run.params, run.tokenizer, lines,
                                        batch_size=args.batch_size,
                                        **_decode_settings(run, args))
    sys.stdout.write(''.join(o + '\n' for o in outputs))
  elif args.command == 'generate':
    if isinstance(run.model, models.DecoderLM):
      args.prompt = _unrepresentable(run.tokenizer, [args.prompt], 'the prompt',
                                     args.strict)[0]
    tokens = len(run.tokenizer.encode(args.prompt)) + (run.tokenizer.bos_id is not None)
    if tokens > max_len:
      _overlong('the prompt', tokens, max_len, args.strict,
                f'continuing from its last {max_len // 2} tokens')
    samples = inference.generate_text(
        run.model, run.params, run.tokenizer, args.prompt,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, num_samples=args.num_samples)
    for sample in samples:
      print(args.prompt + sample)
  else:
    results = _evaluate(run, args)
    results['checkpoint_steps'] = run.steps
    print(json.dumps(results, indent=2))
  return 0


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  # Imports after parsing, so that --help is instant.
  from transformer import errors, platforms
  platforms.skip_absent_accelerators()
  return errors.guarded(_run, args, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())
