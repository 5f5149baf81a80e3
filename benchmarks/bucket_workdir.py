"""A short train.py run into a bucket against the same run into a local workdir.

The bucket is a fake-gcs-server's on a loopback port (the tests' server, `tests/cloud.py`),
so this measures what the workdir layer adds (Orbax through TensorStore's HTTP client,
metrics.jsonl replaced whole at each log step, the tokenizer and TensorBoard copied up),
not a real network. Each run is a fresh process timed from start to exit, with its own HOME
(an empty cache of token stores) and the compilation cache warmed by a first run that is not
counted; local and bucket runs alternate, `--repeats` times, and the table gives medians.

    python benchmarks/bucket_workdir.py --steps 200 --repeats 3
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import cloud  # noqa: E402


def run(workdir: str, args, home: pathlib.Path, env: dict) -> float:
  command = [sys.executable, 'train.py', f'--config={args.config}', f'--workdir={workdir}',
             f'--config.train.num_steps={args.steps}',
             f'--config.train.checkpoint_every={args.checkpoint_every}',
             f'--config.train.eval_every={args.steps}', '--config.train.num_examples_to_show=0']
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, env={**env, 'HOME': str(home)},
                          capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if result.returncode:
    raise SystemExit(f'{workdir}: exit {result.returncode}\n{result.stderr[-3000:]}')
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--checkpoint_every', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    with cloud.serve(scratch / 'server.log') as server:
      env = {**os.environ, **cloud.environment(server)}
      bucket = server.make_bucket()
      run(str(scratch / 'warmup'), args, scratch / 'home-warmup', env)   # compiles
      times = {'local': [], 'bucket': []}
      for i in range(args.repeats):
        times['local'].append(run(str(scratch / f'local{i}'), args, scratch / f'h{i}l', env))
        times['bucket'].append(run(f'gs://{bucket}/run{i}', args, scratch / f'h{i}b', env))
        print(f'repeat {i}: local {times["local"][-1]:.1f} s, bucket '
              f'{times["bucket"][-1]:.1f} s', file=sys.stderr, flush=True)
  local, remote = statistics.median(times['local']), statistics.median(times['bucket'])
  print(f'{args.config}, {args.steps} steps, a checkpoint every {args.checkpoint_every}, '
        f'median of {args.repeats}')
  print('| workdir | wall (s) | runs (s) |\n|---|---|---|')
  for name, median in (('local', local), ('gs:// (fake-gcs-server)', remote)):
    key = 'local' if name == 'local' else 'bucket'
    print(f'| {name} | {median:.1f} | {", ".join(f"{t:.1f}" for t in times[key])} |')
  print(f'bucket / local: {remote / local:.2f}x')


if __name__ == '__main__':
  main()
