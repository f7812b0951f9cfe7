"""Ensembles: votes and averages against hand-computed values; ensemble_runs on real runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskfit import MaskConfig, build_model, mask_model, save_masks
from maskfit.ensemble import ensemble, ensemble_runs, softmax, vote
from maskfit.errors import RunError
from maskfit.masking import target_names

INF = float("inf")


def onehot_logits(labels, n_classes=3):
    out = np.full((len(labels), n_classes), -1.0)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def test_majority_vote():
    members = [onehot_logits([0, 1, 2]), onehot_logits([0, 2, 2]), onehot_logits([1, 1, 0])]
    assert ensemble(members, "labels").tolist() == [0, 1, 2]


def test_vote_ties_go_to_the_earliest_member_among_the_tied():
    assert vote(np.array([[1], [0]]), 2).tolist() == [1]  # two members disagree: the first decides
    assert vote(np.array([[2], [0], [1]]), 3).tolist() == [2]  # three-way tie
    assert vote(np.array([[0], [1], [1], [0]]), 2).tolist() == [0]
    # tie between 1 and 0; member 0 voted 2 (not tied), member 1 voted 1 -> 1
    assert vote(np.array([[2], [1], [1], [0], [0]]), 3).tolist() == [1]
    members = [onehot_logits([1, 0]), onehot_logits([0, 0])]
    assert ensemble(members, "labels").tolist() == [1, 0]


def test_mean_logits_and_mean_probs_by_hand():
    a, b, c = np.array([[10.0, 0.0]]), np.array([[0.0, 2.0]]), np.array([[0.0, 2.0]])
    # mean logits [10/3, 4/3] -> 0
    assert ensemble([a, b, c], "logits").tolist() == [0]
    # mean probs: (1 - 4.54e-5 + 2 * 0.1192) / 3 = 0.4128 for class 0 -> 1
    p0 = (1 / (1 + np.exp(-10)) + 2 / (1 + np.exp(2))) / 3
    assert p0 == pytest.approx(0.41278, abs=1e-4)
    assert ensemble([a, b, c], "probs").tolist() == [1]
    assert ensemble([a, b, c], "labels").tolist() == [1]  # votes 0, 1, 1
    probs = [softmax(x) for x in (a, b, c)]
    assert ensemble(probs, "probs", given="probs").tolist() == [1]
    assert ensemble(probs, "labels", given="probs").tolist() == [1]
    # exactly equal means: the lowest index
    assert ensemble([np.array([[1.0, 2.0]]), np.array([[2.0, 1.0]])], "logits").tolist() == [0]


def test_padded_choices_and_errors():
    m1 = np.array([[0.0, 1.0, -INF], [2.0, 0.0, 1.0]])
    m2 = np.array([[0.5, 0.0, -INF], [0.0, 0.0, 3.0]])
    assert ensemble([m1, m2], "logits").tolist() == [1, 2]
    assert ensemble([m1, m2], "probs").tolist() == [1, 2]
    assert np.allclose(softmax(m1)[0], [1 / (1 + np.e), np.e / (1 + np.e), 0.0])
    with pytest.raises(ValueError, match="method"):
        ensemble([m1], "median")
    with pytest.raises(ValueError, match="shape"):
        ensemble([m1, m1[:1]], "logits")
    with pytest.raises(ValueError, match="logits"):
        ensemble([softmax(m1)], "logits", given="probs")
    with pytest.raises(ValueError):
        ensemble([], "labels")


@pytest.fixture(scope="module")
def rte_runs(tmp_path_factory):
    """Two mask runs of RTE on MiniLM (random fixed masks, no training) + one of another task."""
    root = tmp_path_factory.mktemp("runs")
    labels = ["entailment", "not_entailment"]
    model = build_model("minilm", "sequence", labels, seed=0)
    cfg = MaskConfig()
    runs = []
    for i, p in enumerate((0.05, 0.3)):
        g = torch.Generator().manual_seed(i)
        if i:
            from maskfit.masking import unmask_model
            unmask_model(model)
            with torch.no_grad():
                model.classifier.weight.normal_(0, 0.02, generator=g)
        masks = {n: torch.rand(model.get_submodule(n).weight.shape, generator=g) >= p
                 for n in target_names(model, cfg)}
        mask_model(model, cfg, masks=masks)
        run = root / f"rte-{i}"
        run.mkdir()
        save_masks(model, run / "task.masks")
        (run / "run.json").write_text(json.dumps({
            "task": {"name": "rte"}, "model": "minilm", "method": "mask", "task_type": "sequence",
            "labels": labels, "max_length": 64, "mask_config": cfg.to_dict()}))
        runs.append(run)
    other = root / "sst2"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"task": {"name": "sst2"}, "model": "minilm", "method": "mask",
                                                "task_type": "sequence", "labels": ["0", "1"], "max_length": 64}))
    return runs, other


def test_ensemble_runs_scores_members_and_ensemble(rte_runs):
    from maskfit.run import load_run
    from maskfit.train import evaluate

    runs, other = rte_runs
    out = ensemble_runs(runs, method="labels", limit=16)
    assert out["task"] == "rte" and out["split"] == "dev" and out["metric"] == "accuracy"
    assert out["n_examples"] == 16 and len(out["members"]) == 2
    # two members: every disagreement is a tie, won by the first member
    assert out["ensemble"] == out["members"][0]["score"]
    run = load_run(runs[1])  # member scores are what `maskfit eval` computes
    examples = run.task.load("dev")[:16]
    score, _ = evaluate(run.model(), run.task, run.tokenizer, examples, max_length=64)
    assert out["members"][1]["score"] == score
    with pytest.raises(RunError, match="different tasks"):
        ensemble_runs([runs[0], other], method="labels")
    with pytest.raises(RunError, match="at least two"):
        ensemble_runs(runs[:1])
