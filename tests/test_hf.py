"""Hugging Face checkpoints in and out (transformer.hf), against Hugging Face's own logits.

The fixtures in tests/fixtures/hf/ are tiny random models saved by transformers with their
float32 logits and greedy continuations (tests/fixtures/make_hf_fixtures.py; no torch
here). Each loads through our converter and must give the same logits (max |error| <
1e-4), the same greedy tokens and the same tokenization; ours -> Hugging Face -> ours and
Hugging Face -> ours -> Hugging Face are exact.
"""

import functools
import json
import pathlib
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import transformer as tfm
from transformer import hf, inference
from transformer.data import pretrained_tokenizers
from transformer.data.tokenizers import load_tokenizer
from transformer.errors import CheckpointError, ConfigError, MissingFileError, UserError

from tests.helpers import REPO

FIXTURES = REPO / 'tests' / 'fixtures' / 'hf'
LMS = ['gpt2', 'llama', 'qwen2', 'mistral']
ALL = LMS + ['bert', 'bert_mlm', 'marian']
WEIGHTS = 'model.safetensors'


@functools.cache
def loaded(name):
  return hf.load(FIXTURES / name)


def reference(name):
  return np.load(FIXTURES / name / 'reference.npz')


def logit_errors(name) -> dict[str, float]:
  """max |ours - Hugging Face's| per output, on real (unpadded) tokens."""
  model, variables = loaded(name)
  ref = reference(name)
  if name == 'marian':
    out = {'logits': jax.jit(model.apply)(variables, ref['input_ids'], ref['decoder_input_ids'])}
  elif name.startswith('bert'):
    out = jax.jit(model.apply)(variables, ref['input_ids'], token_type_ids=ref['token_type_ids'])
  else:
    out = {'logits': jax.jit(model.apply)(variables, ref['input_ids'])}
  real = ref['attention_mask'].astype(bool) if 'attention_mask' in ref else Ellipsis
  errors = {}
  for key, ours in out.items():
    ours, theirs = np.asarray(ours), ref[key]
    if key != 'class_logits' and name != 'marian':
      ours, theirs = ours[real], theirs[real]
    errors[key] = float(np.abs(ours - theirs).max())
  return errors


@pytest.mark.parametrize('name', ALL)
def test_logits_match_hugging_face(name):
  errors = logit_errors(name)
  assert set(errors) == ({'mlm_logits', 'class_logits'} if name == 'bert' else
                         {'mlm_logits'} if name == 'bert_mlm' else {'logits'})
  assert max(errors.values()) < 1e-4, errors


def test_each_family_is_the_architecture_it_claims():
  """The options each family sets, so that a match above is not a coincidence of defaults."""
  configs = {name: loaded(name)[0].config for name in ALL}
  assert (configs['gpt2'].pre_norm, configs['gpt2'].position, configs['gpt2'].activation,
          configs['gpt2'].norm_epsilon) == (True, 'learned', 'gelu', 1e-5)
  bert = configs['bert']
  assert (bert.pre_norm, bert.activation, bert.num_token_types, bert.embedding_norm,
          bert.num_classes, configs['bert_mlm'].num_classes) == (False, 'gelu_exact', 2, True,
                                                                 2, 0)
  assert (configs['llama'].num_kv_heads, configs['llama'].tie_output,
          configs['llama'].norm_epsilon) == (2, False, 1e-5)
  assert (configs['qwen2'].qkv_bias, configs['qwen2'].use_bias, configs['qwen2'].tie_output,
          configs['qwen2'].rope_max_wavelength) == (True, False, True, 1e6)
  assert configs['mistral'].resolved_head_dim == 16 != configs['mistral'].d_model // 4
  marian = configs['marian']
  assert (marian.sinusoid_layout, marian.activation, marian.logits_bias,
          marian.mask_decoder_pad, marian.pad_id) == ('split', 'silu', True, False, 87)


@pytest.mark.parametrize('name', LMS)
def test_greedy_generation_matches_hugging_face(name):
  model, variables = loaded(name)
  ref = reference(name)
  expected = ref['greedy_tokens']
  eos = json.loads((FIXTURES / name / 'config.json').read_text())['eos_token_id']
  tokens = inference.generate(model, variables, jnp.asarray(ref['greedy_prompt'])[None],
                              max_new_tokens=len(expected), temperature=0.0, eos_id=eos)
  np.testing.assert_array_equal(np.asarray(tokens)[0], expected)


def test_marian_greedy_translation_matches_hugging_face():
  model, variables = loaded('marian')
  ref = reference('marian')
  expected = ref['greedy_tokens']
  tokens = inference.translate_greedy(model, variables, jnp.asarray(ref['greedy_source'])[None],
                                      max_decode_len=len(expected), eos_id=0,
                                      bos_id=model.config.pad_id)
  np.testing.assert_array_equal(np.asarray(tokens)[0], expected)


@pytest.mark.parametrize('name', ALL)
def test_hugging_face_to_ours_to_hugging_face_is_exact(name, tmp_path):
  model, variables = loaded(name)
  hf.save(model, variables, tmp_path)
  ours, theirs = load_file(tmp_path / WEIGHTS), load_file(FIXTURES / name / WEIGHTS)
  assert sorted(ours) == sorted(theirs)
  for key in theirs:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  config = json.loads((tmp_path / 'config.json').read_text())
  original = json.loads((FIXTURES / name / 'config.json').read_text())
  # Mistral comes back as Llama (the same computation within its window).
  assert config['architectures'] == (['LlamaForCausalLM'] if name == 'mistral'
                                     else original['architectures'])


def perturbed(variables, seed=3):
  """Every parameter moved by noise: a tree that no checkpoint holds."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32), variables)


@pytest.mark.parametrize('name', ['gpt2', 'bert', 'bert_mlm', 'llama', 'qwen2', 'marian'])
def test_ours_to_hugging_face_to_ours_is_exact(name, tmp_path):
  model, variables = loaded(name)
  variables = perturbed(variables)
  hf.save(model, variables, tmp_path)
  again, restored = hf.load(tmp_path)
  assert again.config == model.config and type(again) is type(model)
  flat = traverse_util.flatten_dict(variables['params'])
  back = traverse_util.flatten_dict(restored['params'])
  assert sorted(back) == sorted(flat)
  for key in flat:
    np.testing.assert_array_equal(back[key], flat[key], err_msg='/'.join(key))


def test_scanned_models_save_unscanned(tmp_path):
  model, variables = loaded('llama')
  scanned = model.clone(config=model.config.replace(scan_layers=True))
  hf.save(scanned, {'params': tfm.models.scan_params(variables['params'])}, tmp_path)
  saved = load_file(tmp_path / WEIGHTS)
  np.testing.assert_array_equal(saved['model.layers.1.mlp.up_proj.weight'],
                                load_file(FIXTURES / 'llama' / WEIGHTS)[
                                    'model.layers.1.mlp.up_proj.weight'])


@pytest.mark.parametrize('name', ALL)
def test_tokenizers_match_hugging_face_and_survive_a_save(name, tmp_path):
  tokenizer = pretrained_tokenizers.from_hf_folder(FIXTURES / name)
  expected = json.loads((FIXTURES / name / 'tokenization.json').read_text())
  assert [tokenizer.encode(t) for t in expected['texts']] == expected['ids']
  if name == 'marian':   # source pieces in, target pieces out
    decoded, wanted = [tokenizer.decode(i) for i in expected['target_ids']], expected[
        'target_decoded']
  else:
    decoded, wanted = [tokenizer.decode(i) for i in expected['ids']], expected['decoded']
  assert decoded == wanted
  tokenizer.save(tmp_path)
  again = load_tokenizer(tmp_path)
  fields = ('vocab_size', 'bos_id', 'eos_id', 'pad_id', 'unk_id', 'mask_id')
  assert [getattr(again, f) for f in fields] == [getattr(tokenizer, f) for f in fields]
  assert again.encode(expected['texts'][0]) == expected['ids'][0]


def test_special_ids_come_from_the_checkpoint():
  ids = lambda name: [getattr(pretrained_tokenizers.from_hf_folder(FIXTURES / name), f)
                      for f in ('bos_id', 'eos_id', 'pad_id', 'unk_id', 'mask_id')]
  assert ids('gpt2') == [0, 0, None, 0, None]      # <|endoftext|> everywhere, no pad
  assert ids('qwen2') == [None, 2, None, 0, None]  # Qwen2 prepends nothing
  assert ids('bert') == [2, 3, 0, 1, 4]            # [CLS] and [SEP] as bos and eos
  assert ids('marian') == [87, 0, 87, 1, None]     # decoding starts from <pad>
  # The model's pad id follows: none for GPT-2, BERT's [PAD], Marian's <pad>.
  assert [loaded(n)[0].config.pad_id for n in ('gpt2', 'bert', 'marian')] == [-1, 0, 87]


def test_marian_language_codes_are_one_token(tmp_path):
  for name in pretrained_tokenizers.MARIAN_FILES:
    shutil.copy(FIXTURES / 'marian' / name, tmp_path / name)
  vocab = json.loads((tmp_path / 'vocab.json').read_text())
  vocab['>>deu<<'] = len(vocab)
  (tmp_path / 'vocab.json').write_text(json.dumps(vocab))
  tokenizer = pretrained_tokenizers.MarianTokenizer(tmp_path)
  text = 'a dog runs in the park .'
  assert tokenizer.encode('>>deu<< ' + text)[0] == vocab['>>deu<<']
  assert tokenizer.encode('>>deu<<' + text)[1:] == tokenizer.encode(text)


# --- bad input: one line naming what is wrong ------------------------------------------------

def copy_fixture(name, parent, config_changes=None, tensors=None):
  """A fixture's config.json and weights in parent/name, changed as asked."""
  folder = parent / name
  folder.mkdir(parents=True)
  config = json.loads((FIXTURES / name / 'config.json').read_text())
  config.update(config_changes or {})
  (folder / 'config.json').write_text(json.dumps(config))
  weights = load_file(FIXTURES / name / WEIGHTS)
  if tensors is not None:
    weights = tensors(weights)
  save_file(weights, str(folder / WEIGHTS), metadata={'format': 'pt'})
  return folder


def one_line_error(kind, folder, match):
  with pytest.raises(kind, match=match) as error:
    hf.load(folder)
  assert '\n' not in str(error.value)
  return str(error.value)


def test_unsupported_architectures_are_named(tmp_path):
  folder = tmp_path / 't5'
  folder.mkdir()
  (folder / 'config.json').write_text(json.dumps(
      {'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5'}))
  one_line_error(ConfigError, folder, r'T5ForConditionalGeneration .*relative position bias')
  (folder / 'config.json').write_text(json.dumps(
      {'architectures': ['MPTForCausalLM'], 'model_type': 'mpt'}))
  one_line_error(ConfigError, folder, r'MPTForCausalLM .*ALiBi')


@pytest.mark.parametrize('name,changes,match', [
    ('llama', {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5}},
     "RoPE scaling 'llama3'"),
    ('llama', {'attention_bias': True}, 'attention_bias=True with mlp_bias=False'),
    ('bert', {'position_embedding_type': 'relative_key'}, "position_embedding_type='relative_key'"),
    ('gpt2', {'scale_attn_by_inverse_layer_idx': True}, 'scale_attn_by_inverse_layer_idx'),
    ('marian', {'normalize_before': True}, 'normalize_before=True'),
    ('marian', {'decoder_ffn_dim': 128}, 'decoder_ffn_dim=128'),
    ('gpt2', {'activation_function': 'gelu_fast'}, "activation 'gelu_fast'"),
], ids=['rope-scaling', 'attention-bias-only', 'relative-positions', 'layer-scaled-attention',
        'pre-norm-marian', 'two-ffn-widths', 'activation'])
def test_options_we_cannot_represent_are_named(name, changes, match, tmp_path):
  one_line_error(ConfigError, copy_fixture(name, tmp_path, changes), match)


def test_missing_misshaped_and_unknown_tensors_are_named(tmp_path):
  name = 'model.layers.1.self_attn.k_proj.weight'
  changed = {
      'missing': lambda w: {k: v for k, v in w.items() if k != name},
      'misshaped': lambda w: {**w, name: w[name][:8]},
      'unknown': lambda w: {**w, 'model.layers.0.self_attn.alibi_slopes': np.ones(4, np.float32)},
  }
  folder = lambda case: copy_fixture('llama', tmp_path / case, tensors=changed[case])
  one_line_error(CheckpointError, folder('missing'),
                 rf"'{name}' is missing \(expected shape \[16, 32\]\)")
  one_line_error(CheckpointError, folder('misshaped'),
                 rf"'{name}' has shape \[8, 32\], expected \[16, 32\]")
  one_line_error(ConfigError, folder('unknown'),
                 'no place in our model: model.layers.0.self_attn.alibi_slopes')
  untied = copy_fixture('gpt2', tmp_path, tensors=lambda w: {
      **w, 'lm_head.weight': w['transformer.wte.weight'] + 1})
  one_line_error(ConfigError, untied, "'lm_head.weight' differs")
  with pytest.raises(MissingFileError, match='no config.json'):
    hf.load(tmp_path)
  torch_only = tmp_path / 'torch_only'
  torch_only.mkdir()
  shutil.copy(FIXTURES / 'gpt2' / 'config.json', torch_only)
  (torch_only / 'pytorch_model.bin').write_bytes(b'')
  one_line_error(MissingFileError, torch_only, r'no \*\.safetensors .*pytorch_model\.bin')


def test_base_model_names_and_repeated_tensors_load(tmp_path):
  """A bare GPT2Model's names (no 'transformer.'), the old causal-mask buffers and a tied
  lm_head equal to the embedding: the same parameters."""
  def bare(w):
    w = {k.removeprefix('transformer.'): v for k, v in w.items()}
    return {**w, 'h.0.attn.bias': np.ones((1, 1, 4, 4), np.float32),
            'lm_head.weight': w['wte.weight']}
  _, variables = hf.load(copy_fixture('gpt2', tmp_path, tensors=bare))
  jax.tree.map(np.testing.assert_array_equal, variables, loaded('gpt2')[1])


def test_older_marian_files_repeat_the_shared_embedding_and_the_sinusoids(tmp_path):
  """transformers 4 wrote Marian's embedding four times and its fixed position tables; they
  load when they equal what they repeat (the tables in Marian's formula, written out here)
  and are refused when they do not."""
  d, length = 32, 64
  angle = np.array([[p / 10000 ** (2 * (j // 2) / d) for j in range(d)] for p in range(length)])
  table = np.concatenate([np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])], 1).astype(np.float32)

  def older(w, positions=table):
    shared = w['model.shared.weight']
    return {**w, 'model.encoder.embed_tokens.weight': shared, 'lm_head.weight': shared,
            'model.decoder.embed_tokens.weight': shared,
            'model.encoder.embed_positions.weight': positions,
            'model.decoder.embed_positions.weight': positions}
  _, variables = hf.load(copy_fixture('marian', tmp_path / 'a', tensors=older))
  jax.tree.map(np.testing.assert_array_equal, variables, loaded('marian')[1])
  interleaved = np.stack([table[:, :d // 2], table[:, d // 2:]], -1).reshape(length, d)
  one_line_error(ConfigError, copy_fixture('marian', tmp_path / 'b', tensors=lambda w: older(
      w, interleaved)), "'model.encoder.embed_positions.weight' differs")


def write_bfloat16(weights: dict[str, np.ndarray], file: pathlib.Path) -> None:
  """A safetensors file of BF16 tensors (the layout: header length, JSON header, bytes)."""
  header, data, offset = {}, b'', 0
  for key, value in weights.items():
    raw = np.asarray(value, ml_dtypes.bfloat16).tobytes()
    header[key] = {'dtype': 'BF16', 'shape': list(value.shape),
                   'data_offsets': [offset, offset + len(raw)]}
    data, offset = data + raw, offset + len(raw)
  encoded = json.dumps(header).encode()
  file.write_bytes(struct.pack('<Q', len(encoded)) + encoded + data)


def test_bfloat16_checkpoints_load_as_float32(tmp_path):
  folder = copy_fixture('llama', tmp_path)
  original = load_file(folder / WEIGHTS)
  write_bfloat16(original, folder / WEIGHTS)
  _, variables = hf.load(folder)
  kernel = variables['params']['decoder']['layer_0']['mlp']['wi']['kernel']
  expected = np.asarray(original['model.layers.0.mlp.up_proj.weight'].T, ml_dtypes.bfloat16)
  assert kernel.dtype == jnp.float32
  np.testing.assert_array_equal(kernel, expected.astype(np.float32))


def test_models_a_family_cannot_express_are_refused_by_save(tmp_path):
  """Refused from the config alone, before any parameter is read or any file written."""
  paper = tfm.Transformer(tfm.tiny(vocab_size=40))
  with pytest.raises(ConfigError, match=r"as Marian: .*sinusoid_layout='interleaved'"):
    hf.save(paper, {'params': {}}, tmp_path)
  lm = tfm.DecoderLM(tfm.tiny(vocab_size=40))
  with pytest.raises(ConfigError, match="position='sinusoidal'"):
    hf.save(lm, {'params': {}}, tmp_path)
  assert not any(tmp_path.iterdir())


# --- python -m transformer import -------------------------------------------------------------

def cli(*args, stdin=''):
  return subprocess.run([sys.executable, '-m', 'transformer', *args], cwd=REPO, input=stdin,
                        capture_output=True, text=True, timeout=300)


def test_import_refuses_a_used_folder_and_leaves_nothing_on_failure(tmp_path):
  from transformer.hf.run_folder import import_run
  used = tmp_path / 'used'
  used.mkdir()
  (used / 'notes.txt').write_text('mine')
  with pytest.raises(UserError, match='exists and is not empty'):
    import_run(FIXTURES / 'gpt2', used)
  broken = copy_fixture('gpt2', tmp_path, tensors=lambda w: {
      k: v for k, v in w.items() if k != 'transformer.ln_f.weight'})
  with pytest.raises(CheckpointError, match='transformer.ln_f.weight'):
    import_run(broken, tmp_path / 'run')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['gpt2', 'used']


def test_the_imported_runs_config_takes_a_config_files_sections(tmp_path):
  from transformer.hf.run_folder import training_config
  config_file = tmp_path / 'finetune.py'
  config_file.write_text('from transformer.train.defaults import base_config\n\n'
                         'def get_config():\n  c = base_config()\n'
                         '  c.optim.weight_decay = 0.01\n  c.data.source = "text"\n'
                         '  c.model.d_model = 999\n  return c\n')
  model = loaded('marian')[0]
  config = training_config(model, config_file)
  assert (config.task, config.data.tokenizer, config.data.source, config.optim.weight_decay) == (
      'translation', 'pretrained', 'text', 0.01)
  assert tfm.ModelConfig(**config.model.to_dict()) == model.config   # the model is the import's
  assert training_config(loaded('bert')[0]).optim.schedule == 'warmup_linear'


@pytest.mark.slow
def test_imported_lm_generates_hugging_faces_greedy_tokens(tmp_path):
  workdir = tmp_path / 'run'
  result = cli('import', '--hf', str(FIXTURES / 'llama'), '--workdir', str(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['run']   # no scratch folder left
  ref = reference('llama')
  tokenizer = load_tokenizer(workdir / 'tokenizer')
  prompt = tokenizer.decode(ref['greedy_prompt'])
  assert [tokenizer.bos_id] + tokenizer.encode(prompt) == ref['greedy_prompt'].tolist()
  result = cli('generate', '--workdir', str(workdir), '--prompt', prompt, '--temperature', '0',
               '--max_new_tokens', str(len(ref['greedy_tokens'])))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == prompt + tokenizer.decode(ref['greedy_tokens']) + '\n'
  # The run's config reaches train.py through RUN/config.py, and resuming with it is allowed.
  from transformer.train import workdir as workdir_lib
  from transformer.train.trained_run import load_run
  from transformer.train.defaults import config_from_file
  run = load_run(workdir)
  assert workdir_lib.stored_differences(run.config.to_dict(),
                                        config_from_file(workdir / 'config.py')) == []
  assert run.config.task == 'lm' and run.config.data.tokenizer == 'pretrained'
  assert run.steps == [0]
  jax.tree.map(np.testing.assert_array_equal, run.params, loaded('llama')[1])


@pytest.mark.slow
def test_imported_marian_translates(tmp_path):
  workdir = tmp_path / 'run'
  result = cli('import', '--hf', str(FIXTURES / 'marian'), '--workdir', str(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  tokenizer = load_tokenizer(workdir / 'tokenizer')
  source = json.loads((FIXTURES / 'marian' / 'tokenization.json').read_text())['texts'][2]
  assert tokenizer.encode(source) + [tokenizer.eos_id] == reference('marian')[
      'greedy_source'].tolist()
  result = cli('translate', '--workdir', str(workdir), '--beam_size', '1', stdin=source + '\n')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(tokenizer.decode(reference('marian')['greedy_tokens']))
  # The command pads the source to a bucket of 8 with Marian's pad id (87, masked): the
  # same translation as the unpadded source.
  model, variables = loaded('marian')
  alone = inference.translate_greedy(model, variables,
                                     reference('marian')['greedy_source'][None],
                                     max_decode_len=model.config.max_len, eos_id=0, bos_id=87)
  assert result.stdout == tokenizer.decode(np.asarray(alone)[0]) + '\n'


@pytest.mark.slow
@pytest.mark.slow
def test_imported_run_evaluates_and_fine_tunes(tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(json.loads((FIXTURES / 'llama' / 'tokenization.json')
                                         .read_text())['texts'] * 3) + '\n')
  workdir = tmp_path / 'run'
  config = tmp_path / 'text_config.py'
  config.write_text('from transformer.train.defaults import base_config\n\n'
                    'def get_config():\n  c = base_config()\n  c.data.source = "text"\n'
                    f'  c.data.path = {str(corpus)!r}\n  c.train.batch_size = 4\n  return c\n')
  assert cli('import', '--hf', str(FIXTURES / 'llama'), '--workdir', str(workdir),
             '--config', str(config)).returncode == 0
  result = cli('evaluate', '--workdir', str(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  before = json.loads(result.stdout[result.stdout.index('{'):])['eval/loss']
  assert before > 0
  # Fine-tuning: train.py resumes the imported step 0 with the checkpoint's tokenizer.
  trained = subprocess.run(
      [sys.executable, 'train.py', f'--config={workdir / "config.py"}', f'--workdir={workdir}',
       '--config.train.num_steps=30', '--config.train.eval_every=30',
       '--config.train.checkpoint_every=30', '--config.optim.learning_rate=3e-3',
       '--config.optim.warmup_steps=2', '--config.train.num_examples_to_show=0'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'resuming from step 0 of 30' in trained.stdout
  after = cli('evaluate', '--workdir', str(workdir))
  assert json.loads(after.stdout[after.stdout.index('{'):])['eval/loss'] < before
