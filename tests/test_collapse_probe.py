"""benchmarks/collapse_probe.py reads the same model and examples that `maskfit eval` and training do."""
from __future__ import annotations

import json

import numpy as np
import pytest

from maskfit.cli import main


@pytest.fixture(scope="module")
def probe(load_benchmark):
    return load_benchmark("collapse_probe")


def test_mean_cosine_by_hand(probe):
    same = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    assert probe._mean_cosine(same) == pytest.approx(1.0)
    assert probe._mean_cosine(np.array([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(0.0)
    assert probe._mean_cosine(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)


def test_probe_reads_the_run_model_and_its_init(probe, tmp_path, capsys):
    from maskfit.run import load_run
    from maskfit.tasks import get_task
    from maskfit.train import TrainArgs, evaluate, make_model, split_data

    out = tmp_path / "run"
    assert main(["train", "--task", "rte", "--out", str(out), "--epochs", "1", "--limit-train", "16",
                 "--limit-eval", "12", "--batch-size", "8", "--max-length", "48", "--quiet", "--precision", "fp32",
                 "--lr", "1e-2", "--head-bias", "prior"]) == 0
    capsys.readouterr()
    run = load_run(out)
    dev = run.task.load("dev")[:12]

    def probed(*flags):
        assert probe.main([str(out), "--limit", "12", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    best = probed()
    assert best["state"] == "best mask" and best["examples"] == 12
    assert best["logits"]["accuracy"] == evaluate(run.model(), run.task, run.tokenizer, dev, max_length=48)[0]
    # --init is the model before its first step: drawn again from the run's seed, mask config and train subset
    init = probed("--init")
    args = TrainArgs(**{k: v for k, v in run.info["args"].items() if k in TrainArgs.defaults()})
    fresh = make_model("minilm", get_task("rte"), args, None, train=split_data(get_task("rte"), args)[0])
    assert init["logits"]["accuracy"] == evaluate(fresh.eval(), run.task, run.tokenizer, dev, max_length=48)[0]
    assert init["logits"]["margin_std"] != best["logits"]["margin_std"]  # training moved the mask
