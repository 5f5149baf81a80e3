"""Command line for trained runs.

    python -m transformer translate --workdir DIR < src.txt > hyp.txt
    python -m transformer generate  --workdir DIR --prompt "..." [--max_new_tokens N]
    python -m transformer evaluate  --workdir DIR [--split test] [--average_last N]
    python -m transformer import    --hf HF_MODEL_DIR --workdir DIR [--config FILE.py]

A mistake (no checkpoint, the wrong kind of run, input that is not UTF-8) is one line on
stderr and exit status 2 (`--debug` shows the traceback); input longer than the model
reads is a warning (`--strict`: an error).
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
                         help='a line longer than the model reads is an error, not a warning')

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
                        help='a prompt longer than the model reads is an error, not a warning')

  evaluate = commands.add_parser('evaluate', help='loss, perplexity (and BLEU) on a split')
  _add_common(evaluate)
  evaluate.add_argument('--split', default='valid', help="'valid' or 'test'")
  evaluate.add_argument('--beam_size', type=int, default=None)
  evaluate.add_argument('--alpha', type=float, default=None)
  evaluate.add_argument('--bleu_examples', type=int, default=0, help='0 = the whole split')

  importer = commands.add_parser(
      'import', help='a Hugging Face model folder (GPT-2, BERT, Llama, Mistral, Qwen2, '
      'Marian) -> a run folder')
  importer.add_argument('--hf', required=True,
                        help='the Hugging Face folder: config.json, *.safetensors, tokenizer')
  importer.add_argument('--workdir', required=True, help='the run folder to create')
  importer.add_argument('--config', default=None,
                        help="a training config file whose data, optim and train sections "
                        "the run takes (default: the defaults, a fine-tuning schedule)")
  importer.add_argument('--debug', action='store_true',
                        help='show the traceback of errors that are reported in one line')
  return parser


def _decode_settings(run, args) -> dict:
  decode_cfg = run.config.decode
  return dict(beam_size=args.beam_size or decode_cfg.beam_size,
              alpha=decode_cfg.alpha if args.alpha is None else args.alpha,
              max_extra_len=decode_cfg.max_extra_len)


def _evaluate(run, args) -> dict:
  """Loss, accuracy, perplexity and the task's decoded metrics (BLEU) of the run's
  parameters on a split, on one device."""
  from transformer.data.datasets import get_datasets
  from transformer.tasks import DecodeSettings
  from transformer.train.evaluation import Evaluator
  from transformer.train.strategy import JitStrategy

  config, experiment = run.config, run.experiment
  datasets = get_datasets(config.data, experiment.task.data_needs(config.data),
                          workdir=run.workdir, global_batch_size=config.train.batch_size,
                          seed=config.seed,
                          eval_batch_size=config.train.eval_batch_size or None)
  strategy = JitStrategy(experiment.mesh, experiment.state_sharding, experiment.train_fn,
                         experiment.eval_fn)
  config.train.bleu_examples = args.bleu_examples
  evaluator = Evaluator(experiment.task, experiment.model, datasets, strategy, config.train,
                        DecodeSettings(**_decode_settings(run, args)))
  return evaluator.evaluate(run.params['params'], args.split, decode=True)


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _overlong(what: str, tokens: int, limit: int, strict: bool, reads: str) -> None:
  """A warning (or with --strict an error) for input longer than the model reads."""
  from transformer.errors import UserError
  message = f'{what} is {tokens} tokens; the model reads {limit} (max_len): {reads}'
  if strict:
    raise UserError(message + ' (without --strict this is a warning)')
  _warn(message)


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
  print(f'imported {args.hf} into {workdir}: try `python -m transformer generate` or '
        f'`translate --workdir {workdir}`, or fine-tune with `python train.py --config '
        f'{workdir}/config.py --workdir {workdir}`')
  return 0


def _run(args) -> int:
  from transformer import inference
  from transformer.train.trained_run import load_run

  if args.command == 'import':
    return _import(args)
  run = load_run(args.workdir, step=args.step, average_last=args.average_last, report=_warn)
  if len(run.steps) < args.average_last:
    _warn(f'--average_last {args.average_last}: the run has {len(run.steps)} checkpoints up '
          f'to the chosen step; averaged those (steps {", ".join(map(str, run.steps))})')
  max_len = run.model.config.max_len
  if args.command == 'translate':
    lines = _read_lines()
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
  platforms.skip_absent_tpu()
  return errors.guarded(_run, args, debug=args.debug)


if __name__ == '__main__':
  sys.exit(main())
