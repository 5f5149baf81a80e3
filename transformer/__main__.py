"""Command line for trained runs.

    python -m transformer translate --workdir DIR < src.txt > hyp.txt
    python -m transformer generate  --workdir DIR --prompt "..." [--max_new_tokens N]
    python -m transformer evaluate  --workdir DIR [--split test] [--average_last N]
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_common(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--workdir', required=True, help='the run folder train.py wrote')
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

  generate = commands.add_parser('generate', help='continue a prompt with a language model')
  _add_common(generate)
  generate.add_argument('--prompt', required=True)
  generate.add_argument('--max_new_tokens', type=int, default=200)
  generate.add_argument('--temperature', type=float, default=1.0, help='0 = greedy')
  generate.add_argument('--top_k', type=int, default=None)
  generate.add_argument('--top_p', type=float, default=None)
  generate.add_argument('--seed', type=int, default=0)
  generate.add_argument('--num_samples', type=int, default=1)

  evaluate = commands.add_parser('evaluate', help='loss, perplexity (and BLEU) on a split')
  _add_common(evaluate)
  evaluate.add_argument('--split', default='valid', help="'valid' or 'test'")
  evaluate.add_argument('--beam_size', type=int, default=None)
  evaluate.add_argument('--alpha', type=float, default=None)
  evaluate.add_argument('--bleu_examples', type=int, default=0, help='0 = the whole split')
  return parser


def _decode_settings(run, args) -> dict:
  decode_cfg = run.config.decode
  return dict(beam_size=args.beam_size or decode_cfg.beam_size,
              alpha=decode_cfg.alpha if args.alpha is None else args.alpha,
              max_extra_len=decode_cfg.max_extra_len)


def _evaluate(run, args) -> dict:
  """Loss, accuracy, perplexity and the task's decoded metrics (BLEU) of the run's
  parameters on a split, on one device."""
  from transformer.data import get_datasets
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


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  # Imports after parsing, so that --help is instant.
  from transformer import inference
  from transformer.train.run import load_run

  try:
    run = load_run(args.workdir, step=args.step, average_last=args.average_last)
    if args.command == 'translate':
      lines = [line.rstrip('\n') for line in sys.stdin]
      if not any(line.strip() for line in lines):
        raise ValueError('no input: pipe source sentences, one per line, into stdin')
      outputs = inference.translate_texts(run.model, run.params, run.tokenizer, lines,
                                          batch_size=args.batch_size,
                                          **_decode_settings(run, args))
      sys.stdout.write(''.join(o + '\n' for o in outputs))
    elif args.command == 'generate':
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
  except (FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
