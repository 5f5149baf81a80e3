"""The translation task's decoded metric: BLEU on sentences, the decoded outputs' exact
match where every reference is one word (BLEU's 2- to 4-grams cannot match there)."""

from transformer import inference
from transformer.tasks import DecodeSettings, get_task


class Texts:
  def __init__(self, sources, targets):
    self._texts = {'source': sources, 'target': targets}
    self.tokenizer = None

  def texts(self, split):
    return self._texts


def decoded(monkeypatch, sources, targets, hypotheses):
  monkeypatch.setattr(inference, 'translate_texts', lambda *a, **k: hypotheses[:len(a[3])])
  return get_task('translation').decode_metrics(None, {}, Texts(sources, targets), 'valid',
                                                DecodeSettings(beam_size=1))


def test_one_word_references_get_exact_match(monkeypatch):
  metrics = decoded(monkeypatch, ['123', '45', '6789', '1'], ['321', '54', '9876', '1'],
                    ['321', '54', '9875', '1'])
  assert metrics == {'decoded_exact_match': 0.75}


def test_sentences_get_bleu(monkeypatch):
  sentence = 'the cat sat on the mat'
  metrics = decoded(monkeypatch, ['a', 'b'], [sentence, 'a dog runs in the park'],
                    [sentence, 'a dog runs in the park'])
  assert set(metrics) == {'bleu'} and metrics['bleu'] > 99
