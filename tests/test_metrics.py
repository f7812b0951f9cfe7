"""compute_metric against values worked out by hand."""

import math

import pytest

from maskfit.metrics import METRIC_NAMES, compute_metric
from maskfit.tasks import TASKS


def test_accuracy():
    assert compute_metric("accuracy", ["a", "b", "b", "a"], ["a", "b", "a", "a"]) == 0.75


def test_mcc_from_confusion_matrix():
    # gold 1 / pred 1: TP=3, gold 0 / pred 0: TN=2, FP=1, FN=2
    golds = ["1", "1", "1", "0", "0", "0", "1", "1"]
    preds = ["1", "1", "1", "0", "0", "1", "0", "0"]
    tp, tn, fp, fn = 3, 2, 1, 2
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metric("mcc", preds, golds) == pytest.approx(expected)  # 4 / sqrt(240)
    assert compute_metric("mcc", golds, golds) == pytest.approx(1.0)
    assert compute_metric("mcc", ["1"] * 8, golds) == 0.0  # undefined -> 0


def test_entity_f1_with_partial_matches():
    golds = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    # PER span cut short (wrong), LOC right, ORG right, one spurious MISC
    preds = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    precision, recall = 2 / 4, 2 / 3
    assert compute_metric("f1", preds, golds) == pytest.approx(2 * precision * recall / (precision + recall))  # 4/7


def test_entity_f1_conlleval_mode_reads_lone_inside_tag_as_entity():
    # conlleval (seqeval default mode): an I- tag after O starts an entity
    assert compute_metric("f1", [["O", "I-LOC"]], [["O", "B-LOC"]]) == pytest.approx(1.0)


def test_word_accuracy_counts_words_not_sentences():
    golds = [["DT", "NN", "VBZ"], ["NN"]]
    preds = [["DT", "NN", "VB"], ["JJ"]]
    assert compute_metric("word_accuracy", preds, golds) == pytest.approx(2 / 4)


def test_bad_calls():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        compute_metric("bleu", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        compute_metric("accuracy", [1, 0], [1])
    with pytest.raises(ValueError, match="sentence 0"):
        compute_metric("f1", [["O"]], [["O", "O"]])


def test_every_task_metric_has_a_display_name():
    assert {spec.metric for spec in TASKS.values()} <= set(METRIC_NAMES)
