"""Task metrics: ``compute_metric(name, preds, golds) -> float``.

``accuracy`` and ``mcc`` take flat sequences of labels (sklearn ``accuracy_score`` /
``matthews_corrcoef``). ``f1`` and ``word_accuracy`` take one list of tag strings per
sentence: ``f1`` is seqeval's entity-level micro F1 in its default (conlleval) mode, as
in the CoNLL-2003 evaluation; ``word_accuracy`` is accuracy over all words.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain


METRIC_NAMES = {
    "accuracy": "accuracy",
    "mcc": "Matthews correlation",
    "f1": "entity F1",
    "word_accuracy": "word accuracy",
}
"""Metric name -> display name."""


def _check_tagging(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> None:
    for i, (p, g) in enumerate(zip(preds, golds)):
        if len(p) != len(g):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} gold tags")


def compute_metric(name: str, preds: Sequence, golds: Sequence) -> float:
    """Score ``preds`` against ``golds`` with metric ``name`` (see :data:`METRIC_NAMES`).

    Returns a float in [0, 1] (MCC in [-1, 1]; 0 when undefined, e.g. one class only).
    """
    # Imported here: scikit-learn and seqeval bring SciPy and pandas (~140 MB of RSS) that a
    # server, which never scores, should not pay for.
    from seqeval.metrics import f1_score
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(METRIC_NAMES)})")
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("no examples to score")
    if name == "accuracy":
        return float(accuracy_score(golds, preds))
    if name == "mcc":
        return float(matthews_corrcoef(golds, preds))
    _check_tagging(preds, golds)
    if name == "f1":
        return float(f1_score([list(g) for g in golds], [list(p) for p in preds], average="micro"))
    return float(accuracy_score(list(chain.from_iterable(golds)), list(chain.from_iterable(preds))))
