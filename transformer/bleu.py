"""BLEU of detokenized text: sacreBLEU's corpus score, the number WMT papers report.

Translation tasks (`transformer.tasks`) and notebooks score decoded sentences with it.
"""

from __future__ import annotations

from typing import Sequence


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacreBLEU (13a tokenisation, the WMT default) on detokenized text."""
  import sacrebleu
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
