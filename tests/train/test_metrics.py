"""Metric files, BLEU against a hand count, throughput and the peak-FLOPs table."""

import math

import pytest

from transformer import bleu
from transformer.train import metrics as metrics_lib


@pytest.mark.parametrize('kind,expected', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H200', 989e12),
    ('NVIDIA A100-SXM4-40GB', 312e12), ('NVIDIA L4', 121e12), ('NVIDIA L40S', 362e12),
    ('NVIDIA A10', 125e12), ('NVIDIA A10G', None), ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12), ('TPU v5', 459e12), ('TPU v6 lite', 918e12), ('cpu', None),
])
def test_peak_flops_lookup_tells_apart_kinds_that_share_a_prefix(kind, expected):
  assert metrics_lib.data_sheet_peak(kind) == expected


def test_bleu_against_a_hand_count():
  """One sentence pair, counted by hand (13a tokenisation splits nothing here):
  hypothesis 'the quick brown fox jumps over the dog' (8 tokens) against the reference
  'the quick brown fox jumped over the lazy dog' (9 tokens)."""
  hypothesis = 'the quick brown fox jumps over the dog'
  reference = 'the quick brown fox jumped over the lazy dog'
  # Matching n-grams / hypothesis n-grams:
  #   1: the quick brown fox over the dog = 7 / 8
  #   2: the quick, quick brown, brown fox, over the = 4 / 7
  #   3: the quick brown, quick brown fox = 2 / 6
  #   4: the quick brown fox = 1 / 5
  precisions = [7 / 8, 4 / 7, 2 / 6, 1 / 5]
  brevity = math.exp(1 - 9 / 8)
  expected = 100 * brevity * math.exp(sum(math.log(p) for p in precisions) / 4)
  assert bleu.corpus_bleu([hypothesis], [reference]) == pytest.approx(expected, rel=1e-6)
  assert bleu.corpus_bleu([reference], [reference]) == pytest.approx(100.0)
  with pytest.raises(ValueError, match='hypotheses'):
    bleu.corpus_bleu([hypothesis, hypothesis], [reference])


def test_throughput_counts_tokens_per_second_without_excluded_time(monkeypatch):
  clock = iter([10.0, 12.0, 20.0])
  monkeypatch.setattr(metrics_lib.time, 'perf_counter', lambda: next(clock))
  throughput = metrics_lib.Throughput(flops_per_token=6.0, peak_flops_total=100.0)
  assert throughput.update(0) == {}
  assert throughput.update(50) == {'train/tokens_per_sec': 25.0, 'train/mfu': 1.5}
  throughput.exclude(4.0)     # an evaluation took 4 of the next 8 seconds
  assert throughput.update(20) == {'train/tokens_per_sec': 5.0, 'train/mfu': 0.3}
