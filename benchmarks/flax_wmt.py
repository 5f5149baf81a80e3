"""Our encoder-decoder against Flax's `examples/wmt` model, side by side on this machine.

The peer is Flax's own `examples/wmt/models.py` and `decode.py`, imported from a checkout
you pass with --flax (e.g. fetched from google/flax; nothing of it is copied here). Its
`train.py` needs TensorFlow for its input pipeline, so the train step around its model is
written here, doing the same work as its `train_step`: label-smoothed cross-entropy over
the non-pad targets, gradients, an Adam update, accuracy.

Equal sizes and equal work:
  - both models pre-LN (the wmt example's blocks; ours with `pre_norm=True`), sinusoidal
    positions, one shared embedding that is also the output projection, dropout 0.1 on
    embeddings, sub-layer outputs and attention weights, Adam (0.9, 0.98, 1e-9) at a
    constant rate, label smoothing 0.1; the same random batch of full rows;
  - sizes: "multi30k" (3+3 layers, d_model 256, 4 heads, MLP 1024, vocabulary 5000, 64
    rows of 48 tokens) and Table-3 "base" (6+6 layers, d_model 512, 8 heads, MLP 2048,
    vocabulary 37000, 32 rows of 64 tokens);
  - where they differ: the wmt example applies dropout to the attention weights through
    `nn.MultiHeadDotProductAttention`, we through our own attention; its biases start
    at N(0, 1e-6), ours at 0 (no effect on speed).
Measured: milliseconds per train step (jitted, compiled first, the two alternating,
medians); temporary memory of one step (`compiled.memory_analysis()`); beam search (beam
4, alpha 0.6, up to source length + 50 tokens, an end token that never comes, so both
decode the full length) on 32 sentences of 30 tokens with the multi30k-size models:
sentences per second. Where the decoders differ: ours projects each source's
cross-attention keys and values once, the example's at every step (for every beam: ours
reads them once per source for all its beams); the example gathers
its whole cache by beam after every step, ours leaves it in place and reads each beam's
history through a slot table; ours attends over a half-length cache for the first half
of the steps (the example over all max_len slots at every step).

    python benchmarks/flax_wmt.py --flax ../peers/flax [--steps 10] [--repeats 3] [--parts train beam]
"""

import argparse
import functools
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

SIZES = {
    'multi30k': dict(layers=3, d_model=256, heads=4, mlp=1024, vocab=5000, rows=64, length=48),
    'base': dict(layers=6, d_model=512, heads=8, mlp=2048, vocab=37000, rows=32, length=64),
}
NEVER = 4   # an end-of-sentence id that random tokens (>= 5) never produce...
SMOOTHING = 0.1


def smoothed_loss(logits, targets, weights):
  """Label-smoothed cross-entropy summed over weighted tokens, as the wmt example computes
  it (its normalising constant subtracted), over the weight sum; and accuracy."""
  vocab = logits.shape[-1]
  confidence = 1.0 - SMOOTHING
  low = SMOOTHING / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  loss = -jnp.sum(soft * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1) - normalizer
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  return jnp.sum(loss * weights) / jnp.sum(weights), accuracy


def flax_step(models, size):
  s = SIZES[size]
  config = models.TransformerConfig(
      vocab_size=s['vocab'], output_vocab_size=s['vocab'], share_embeddings=True,
      logits_via_embedding=True, emb_dim=s['d_model'], num_heads=s['heads'],
      num_layers=s['layers'], qkv_dim=s['d_model'], mlp_dim=s['mlp'], max_len=256,
      dropout_rate=0.1, attention_dropout_rate=0.1, deterministic=False)
  model = models.Transformer(config)
  tokens = jnp.ones((1, s['length']), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens)['params']
  tx = optax.adam(1e-4, b1=0.9, b2=0.98, eps=1e-9)

  def step(state, batch, rng):
    params, opt_state = state

    def loss_fn(p):
      logits = model.apply({'params': p}, batch['inputs'], batch['targets'],
                           rngs={'dropout': rng})
      return smoothed_loss(logits, batch['targets'], batch['weights'])
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {'loss': loss,
                                                               'accuracy': accuracy}
  return jax.jit(step, donate_argnums=0), (params, tx.init(params)), config


def our_step(size):
  from transformer.train import experiment
  from transformer.train.defaults import base_config
  from transformer.train.strategy import JitStrategy
  s = SIZES[size]
  c = base_config()
  c.task = 'translation'
  c.model.update(d_model=s['d_model'], num_heads=s['heads'], mlp_dim=s['mlp'],
                 num_layers=s['layers'], max_len=256, dropout_rate=0.1,
                 attention_dropout_rate=0.1, pre_norm=True)
  c.optim.update(schedule='constant', learning_rate=1e-4, b1=0.9, b2=0.98, eps=1e-9)
  c.train.update(batch_size=s['rows'], label_smoothing=SMOOTHING)
  c.data.update(max_len=s['length'])
  c.mesh.update(data=1)
  exp = experiment.build(c, vocab_size=s['vocab'], mesh=None)
  strategy = JitStrategy(exp.mesh, exp.state_sharding, exp.train_fn, exp.eval_fn)
  return strategy, exp.init_state(exp.rng), exp


def batch_of(size, seed=0):
  s = SIZES[size]
  rng = np.random.default_rng(seed)
  ids = lambda: rng.integers(5, s['vocab'], (s['rows'], s['length'])).astype(np.int32)
  return {'inputs': ids(), 'targets': ids(), 'weights': np.ones((s['rows'], s['length']),
                                                                 np.float32)}


def timed(fn, steps):
  out = fn()
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def train_steps(models, size, steps, repeats):
  from transformer import sharding
  batch = batch_of(size)
  flax_fn, flax_state, _ = flax_step(models, size)
  ours, our_state, exp = our_step(size)
  our_batch = dict(batch, decoder_inputs=np.concatenate(
      [np.ones((batch['targets'].shape[0], 1), np.int32), batch['targets'][:, :-1]], 1))
  our_batch = sharding.global_batch(our_batch, exp.mesh)
  flax_batch = {k: jnp.asarray(v) for k, v in batch.items()}
  rng = jax.random.PRNGKey(1)
  state = {'flax': flax_state, 'ours': our_state}

  def run_flax():
    state['flax'], metrics = flax_fn(state['flax'], flax_batch, rng)
    return metrics

  def run_ours():
    state['ours'], metrics = ours.train(state['ours'], our_batch)
    return metrics
  times = {'flax': [], 'ours': []}
  for _ in range(repeats):
    times['flax'].append(timed(run_flax, steps))
    times['ours'].append(timed(run_ours, steps))
  memory = {
      'flax': flax_fn.lower(state['flax'], flax_batch, rng).compile().memory_analysis(),
      'ours': ours.train.lower(state['ours'], our_batch).compile().memory_analysis()}
  return ({k: statistics.median(v) for k, v in times.items()},
          {k: m.temp_size_in_bytes for k, m in memory.items()})


def beam_decoding(models, decode, repeats, sentences=32, source_length=30):
  from transformer import inference
  s = SIZES['multi30k']
  rng = np.random.default_rng(2)
  src = jnp.asarray(rng.integers(5, s['vocab'], (sentences, source_length)).astype(np.int32))
  max_len = source_length + 50
  # Flax's example: its predict_step's recipe, with our end id that never comes.
  _, _, config = flax_step(models, 'multi30k')
  eval_config = config.replace(deterministic=True)
  decode_config = config.replace(deterministic=True, decode=True)
  params = jax.jit(models.Transformer(eval_config).init)(
      jax.random.PRNGKey(0), src, src)['params']

  @jax.jit
  def flax_beam(params, inputs):
    encoded = decode.flat_batch_beam_expand(
        models.Transformer(eval_config).apply({'params': params}, inputs,
                                              method=models.Transformer.encode), 4)
    raw = decode.flat_batch_beam_expand(inputs, 4)
    cache = models.Transformer(decode_config).init(
        jax.random.PRNGKey(0), jnp.ones(inputs.shape, jnp.int32),
        jnp.ones((inputs.shape[0], max_len), jnp.int32))['cache']

    def tokens_to_logits(ids, flat_cache):
      logits, new = models.Transformer(decode_config).apply(
          {'params': params, 'cache': flat_cache}, encoded, raw, ids, mutable=['cache'],
          method=models.Transformer.decode)
      return logits.squeeze(axis=1), new['cache']
    seqs, _ = decode.beam_search(inputs, cache, tokens_to_logits, beam_size=4, alpha=0.6,
                                 eos_id=NEVER, max_decode_len=max_len)
    return seqs

  import transformer as tfm
  model = tfm.Transformer(tfm.tiny(vocab_size=s['vocab'], d_model=s['d_model'],
                                   num_heads=s['heads'], mlp_dim=s['mlp'],
                                   num_layers=s['layers'], pre_norm=True, max_len=256))
  our_params = model.init(jax.random.PRNGKey(0), src, src[:, :8])
  ours = functools.partial(inference.translate_beam, model, our_params, beam_size=4,
                           alpha=0.6, max_decode_len=max_len, eos_id=NEVER)
  times = {'flax': [], 'ours': []}
  for _ in range(repeats):
    times['flax'].append(timed(lambda: flax_beam(params, src), 1))
    times['ours'].append(timed(lambda: ours(src), 1))
  return {k: sentences / statistics.median(v) for k, v in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--flax', required=True, help='a checkout of google/flax')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--parts', nargs='+', default=['train', 'beam'], choices=['train', 'beam'])
  args = parser.parse_args()
  sys.path.insert(0, f'{args.flax}/examples/wmt')
  import decode as flax_decode   # noqa: E402  (the peer's modules, from its checkout)
  import models as flax_models   # noqa: E402

  print(f'backend: {jax.default_backend()}, {jax.device_count()} device(s)')
  if 'train' in args.parts:
    print(f'\n{"train step":<12} {"wmt ms":>9} {"ours ms":>9} {"our speed":>10} '
          f'{"wmt temp GiB":>13} {"ours temp GiB":>14} {"memory":>7}')
    for size in SIZES:
      steps = args.steps if size == 'multi30k' else max(2, args.steps // 3)
      times, memory = train_steps(flax_models, size, steps, args.repeats)
      print(f'{size:<12} {1e3 * times["flax"]:>9.1f} {1e3 * times["ours"]:>9.1f} '
            f'{times["flax"] / times["ours"]:>9.2f}x {memory["flax"] / 2**30:>13.2f} '
            f'{memory["ours"] / 2**30:>14.2f} {memory["ours"] / memory["flax"]:>6.2f}x',
            flush=True)
  if 'beam' not in args.parts:
    return
  rates = beam_decoding(flax_models, flax_decode, args.repeats)
  print(f'\nbeam 4, 32 sentences x (30 + 50) tokens, multi30k size: wmt '
        f'{rates["flax"]:.2f} sentences/s, ours {rates["ours"]:.2f} sentences/s '
        f'({rates["ours"] / rates["flax"]:.2f}x)')


if __name__ == '__main__':
  main()
