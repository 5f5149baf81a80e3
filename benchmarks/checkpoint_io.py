"""Checkpoint save and restore seconds for a ~100M-parameter train state, into a local folder
and into a bucket, side by side.

The state is what the trainer saves: a DecoderLM's parameters with Adam's two moments and
the step (float32, 3 x the parameters' bytes), with the data position and the config, through
`transformer.train.checkpoint.Checkpointer` (Orbax; asynchronous, as the trainer runs it).
The bucket is a fake-gcs-server's on a loopback port (`tests/cloud.py`, in memory), so the
bucket column measures Orbax's GCS path (TensorStore's HTTP client, the commit marker) on
this machine, not a network. Per repeat and target, one save (the seconds until `save`
returns, which is what a training step waits for, and until the write is finished) and
one restore by a fresh Checkpointer, as a resumed run does; local and bucket alternate,
`--repeats` times; the table gives medians and the ratio within this one run.

    python benchmarks/checkpoint_io.py --repeats 3
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import cloud  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--d_model', type=int, default=768)
  parser.add_argument('--num_layers', type=int, default=10)
  parser.add_argument('--vocab_size', type=int, default=32_000)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    with cloud.serve(scratch / 'server.log') as server:
      os.environ.update(cloud.environment(server))   # before TensorStore and gcsfs start
      bucket = server.make_bucket()
      run(args, {'local': str(scratch / 'local'), 'gs:// (fake-gcs-server)':
                 f'gs://{bucket}'})


def run(args, targets: dict[str, str]):
  import jax
  import numpy as np

  from transformer import storage
  from transformer.train import experiment
  from transformer.train.checkpoint import Checkpointer
  from transformer.train.defaults import config_from_file

  config = config_from_file(REPO / 'configs' / 'lm1b.py')
  config.model.update(d_model=args.d_model, num_heads=args.d_model // 64,
                      mlp_dim=4 * args.d_model, num_layers=args.num_layers,
                      vocab_size=args.vocab_size, dtype='float32')
  exp = experiment.build(config)
  state = exp.init_state(exp.rng)
  leaves = jax.tree.leaves(state)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  megabytes = sum(x.nbytes for x in leaves) / 2**20
  print(f'state: {params / 1e6:.1f}M parameters, {megabytes:.0f} MiB with the optimizer '
        f'state ({len(leaves)} arrays)', file=sys.stderr, flush=True)

  times = {name: {'save returns': [], 'save finished': [], 'restore': []} for name in targets}
  for repeat in range(-1, args.repeats):   # repeat -1 warms both paths up, not counted
    for name, root in targets.items():
      directory = storage.path(root) / f'repeat{repeat}' / 'checkpoints'
      checkpointer = Checkpointer(directory, max_to_keep=2)
      start = time.perf_counter()
      checkpointer.save(1000, state, {'next_index': 12_000}, config.to_dict())
      returned = time.perf_counter()
      checkpointer.wait()
      finished = time.perf_counter()
      checkpointer.close()
      restore_start = time.perf_counter()
      fresh = Checkpointer(directory, max_to_keep=2)   # as a resumed run opens it
      restored, data, _ = fresh.restore(1000, exp.abstract_state)
      jax.block_until_ready(restored)
      restore_end = time.perf_counter()
      fresh.close()
      assert data == {'next_index': 12_000}
      np.testing.assert_array_equal(np.asarray(jax.tree.leaves(restored)[-1]),
                                    np.asarray(leaves[-1]))
      del restored
      storage.rmtree(directory.parent)
      if repeat < 0:
        continue
      times[name]['save returns'].append(returned - start)
      times[name]['save finished'].append(finished - start)
      times[name]['restore'].append(restore_end - restore_start)
      print(f'repeat {repeat} {name}: ' + ', '.join(
          f'{k} {v[-1]:.2f} s' for k, v in times[name].items()), file=sys.stderr, flush=True)

  print(f'{params / 1e6:.1f}M parameters, {megabytes:.0f} MiB saved (parameters and Adam '
        f'state, float32), median of {args.repeats}')
  print('| target | save returns (s) | save finished (s) | restore (s) |\n|---|---|---|---|')
  for name, t in times.items():
    cells = [f'{statistics.median(v):.2f} ({", ".join(f"{x:.2f}" for x in v)})'
             for v in t.values()]
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
  local, remote = (times[name] for name in targets)
  print('bucket / local: ' + ', '.join(
      f'{k} {statistics.median(remote[k]) / statistics.median(local[k]):.2f}x' for k in local))


if __name__ == '__main__':
  main()
