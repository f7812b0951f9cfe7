"""train → eval → predict through the real CLI, per task type and method; resume; bad input.

The real MiniLM on a few dozen real rows: 1–2 short epochs, so every code path runs
without pretending to measure accuracy (that is benchmarks/paper_table.py's job).
"""
from __future__ import annotations

import json

import pytest
import torch

from maskfit.cli import main
from maskfit.run import load_run

FAST = ["--limit-train", "16", "--limit-eval", "12", "--batch-size", "8", "--max-length", "48", "--quiet",
        "--precision", "fp32"]

CASES = {
    "sequence": ("sst2", {"text": ["a gorgeous , witty , seductive movie .", "dull and lifeless"]}),
    "pair": ("rte", {"text": ["The cat sat on the mat."], "text_pair": ["A cat is sitting."]}),
    "tagging": ("ner", {"text": ["Peter Blackburn visited Unaffable Industries in Berlin"]}),
    "choice": ("arc-easy", {"text": ["Which is a mammal?"], "choice": ["shark", "whale", "trout", "eel"]}),
}
CASES["pair-mean"] = CASES["pair"]  # --pooling mean (sentence and choice heads only)
CASES["choice-mean"] = CASES["choice"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


LR = {"mask": "1e-3", "finetune": "5e-5", "lora": "5e-4"}


@pytest.mark.parametrize("method", ["mask", "finetune", "lora"])
@pytest.mark.parametrize("kind", list(CASES))
def test_train_eval_predict_round_trip(kind, method, tmp_path, capsys):
    from maskfit.run import BEST_FILE

    task, inputs = CASES[kind]
    pooling = "mean" if kind.endswith("-mean") else "cls"
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["train", "--task", task, "--method", method, "--out", out, "--epochs", "1",
                               "--lr", LR[method], "--pooling", pooling, *FAST], capsys)
    assert rc == 0, err
    assert load_run(out).model().pooling == pooling  # eval, predict and serve rebuild the same head
    assert f"{task}: best dev" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completed"] and len(metrics["epochs"]) == 1 and metrics["n_train"] == 16
    assert metrics["train_examples_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert "torch" in metrics["versions"]
    weights = out / BEST_FILE[method]
    assert weights.is_file() and not (out / "checkpoint").exists()
    assert (out / "train.log").read_text().count("epoch 1:") == 1

    # eval reproduces the score the run recorded for its best epoch (same examples, same precision)
    rc, stdout, err = run_cli(["eval", "--run", out, "--limit", "12"], capsys)
    assert rc == 0, err
    ev = json.loads(stdout)
    assert ev["score"] == pytest.approx(metrics["best_score"], abs=1e-9)
    assert ev["loss"] == pytest.approx(metrics["epochs"][metrics["best_epoch"] - 1]["dev_loss"], rel=1e-6)

    args = ["predict", "--run", out]
    for t in inputs["text"]:
        args += ["--text", t]
    for p in inputs.get("text_pair", []):
        args += ["--text-pair", p]
    for c in inputs.get("choice", []):
        args += ["--choice", c]
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    preds = [json.loads(line) for line in stdout.splitlines()]
    assert len(preds) == len(inputs["text"])
    info = json.loads((out / "run.json").read_text())
    if kind.startswith("tagging"):
        assert len(preds[0]["tags"]) == len(inputs["text"][0].split())
        assert set(preds[0]["tags"]) <= set(info["labels"])
    elif kind.startswith("choice"):
        assert 0 <= preds[0]["choice"] < 4 and sum(preds[0]["probabilities"]) == pytest.approx(1, abs=1e-5)
    else:
        assert preds[0]["label"] in info["labels"]
        assert sum(preds[0]["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_finetune_trains_every_weight_and_mask_trains_none(tmp_path):
    from maskfit.tasks import get_task
    from maskfit.train import TrainArgs, fit
    from maskfit import build_model

    task = get_task("sst2")
    base = build_model("minilm", "sequence", ["0", "1"])
    emb0 = base.bert.embeddings.word_embeddings.weight.detach().clone()
    args = dict(epochs=1, limit_train=16, limit_eval=8, batch_size=8, max_length=32, precision="fp32")
    ft = fit(task, "minilm", None, TrainArgs(method="finetune", lr=1e-3, **args), progress=False).model
    assert not torch.equal(ft.bert.embeddings.word_embeddings.weight, emb0)
    assert not torch.equal(ft.bert.encoder.layer[0].attention.self.query.weight,
                           base.bert.encoder.layer[0].attention.self.query.weight)
    mk = fit(task, "minilm", None, TrainArgs(method="mask", lr=1e-2, **args), progress=False).model
    assert torch.equal(mk.bert.embeddings.word_embeddings.weight, emb0)
    assert torch.equal(mk.bert.encoder.layer[3].output.dense.weight, base.bert.encoder.layer[3].output.dense.weight)
    # LoRA: adapters on query and value of every block and the head train; the pretrained weights do not
    from maskfit.masking import unwrap

    lo = fit(task, "minilm", None, TrainArgs(method="lora", lr=1e-2, **args), progress=False).model
    inner = unwrap(lo)  # the transformers model, LoRA layers inside
    q = inner.bert.encoder.layer[0].attention.self.query
    assert torch.equal(q.base_layer.weight, base.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(inner.bert.embeddings.word_embeddings.weight, emb0)
    assert q.lora_B["default"].weight.abs().sum() > 0  # B starts at zero: it moved
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in inner.named_parameters()
               if p.requires_grad and ".lora_" in n}
    assert trained == {"query", "value"}
    assert any(n.startswith("classifier.modules_to_save") and p.requires_grad for n, p in inner.named_parameters())


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    from maskfit.maskfile import read_maskfile
    from maskfit.tasks import get_task
    from maskfit.train import TrainArgs, fit

    task = get_task("mrpc")
    args = TrainArgs(method="mask", lr=2e-3, epochs=2, patience=0, limit_train=24, limit_eval=12, batch_size=8,
                     max_length=48, precision="fp32")
    straight = fit(task, "minilm", tmp_path / "straight", args, progress=False)

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(task, "minilm", tmp_path / "resumed", args, callbacks=[stop_after_first], progress=False)
    assert (tmp_path / "resumed" / "checkpoint" / "progress.json").exists()
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    run_file = tmp_path / "resumed" / "run.json"  # written by a version without --pooling: still resumable
    info = json.loads(run_file.read_text())
    del info["args"]["pooling"]
    run_file.write_text(json.dumps(info))
    resumed = fit(task, "minilm", tmp_path / "resumed", args, progress=False)
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resuming" in log and log.count("epoch 1:") == 1 and log.count("epoch 2:") == 1
    assert [r["dev_score"] for r in resumed.metrics["epochs"]] == [r["dev_score"] for r in straight.metrics["epochs"]]
    a, b = read_maskfile(tmp_path / "straight" / "task.masks"), read_maskfile(tmp_path / "resumed" / "task.masks")
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_completed_or_different_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--task", "sst2", "--out", out, "--epochs", "1", *FAST]
    assert run_cli(base, capsys)[0] == 0
    rc, _, err = run_cli(base, capsys)
    assert rc == 2 and "already complete" in err and "--overwrite" in err
    rc, _, err = run_cli(["train", "--task", "cola", "--out", out, "--epochs", "1", *FAST], capsys)
    assert rc == 2 and "different run" in err
    assert run_cli(base + ["--overwrite"], capsys)[0] == 0


def one_line_error(rc, err):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskfit: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_malformed_rows_name_file_and_line(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood film,pos\nbad film\nfine,neg\n")
    rc, _, err = run_cli(["train", "--task", f"csv:{train}", "--text-column", "text", "--label-column", "label",
                          "--out", tmp_path / "r", *FAST], capsys)
    line = one_line_error(rc, err)
    assert "train.csv:3" in line


def test_dev_label_missing_from_train_is_refused(tmp_path, capsys):
    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    train.write_text("text\tlabel\ngood\tpos\nbad\tneg\n")
    dev.write_text("text\tlabel\nmeh\tneutral\n")
    rc, _, err = run_cli(["train", "--task", f"tsv:{train}", "--dev", dev, "--text-column", "text",
                          "--label-column", "label", "--out", tmp_path / "r", *FAST], capsys)
    assert "neutral" in one_line_error(rc, err)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--task", "nosuchtask", "--out", "X"], "unknown task"),
    (["train", "--task", "qnli", "--out", "X"], "QNLI train is not available"),
    (["train", "--task", "sst2", "--out", "X", "--blocks", "2-99"], "out of range"),
    (["train", "--task", "sst2", "--out", "X", "--modules", "q,zz"], "unknown module"),
    (["train", "--task", "ner", "--out", "X", "--pooling", "mean"], "tagging heads read every token"),
    (["train", "--task", "arc-easy", "--out", "X", "--head-bias", "prior", *FAST], "sequence or tagging task"),
    (["eval", "--run", "/nonexistent/run"], "not a maskfit run directory"),
])
def test_bad_arguments_get_one_line_errors(argv, needle, tmp_path, capsys):
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert needle in one_line_error(*run_cli(argv, capsys)[::2])


@pytest.mark.parametrize("method", ["mask", "lora"])
def test_wrong_base_for_mask_file_is_refused(method, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", "--task", "sst2", "--method", method, "--out", out, "--epochs", "1", *FAST],
                   capsys)[0] == 0
    info = json.loads((out / "run.json").read_text())
    # a different base: MiniLM with one embedding row changed, saved as a local model folder
    from transformers import AutoModel

    from maskfit import resolve_model

    other = AutoModel.from_pretrained(resolve_model("minilm"))
    with torch.no_grad():
        other.embeddings.word_embeddings.weight[100] += 1.0
    other.save_pretrained(tmp_path / "other")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(tmp_path / "other")
    info["model"] = str(tmp_path / "other")
    (out / "run.json").write_text(json.dumps(info))
    line = one_line_error(*run_cli(["eval", "--run", out], capsys)[::2])
    assert "fingerprint" in line and "minilm" in line


@pytest.mark.parametrize("task", ["rte", "ner"])
def test_head_bias_prior_is_the_train_label_prior_and_stays_frozen(task, tmp_path, capsys):
    """``--head-bias prior`` starts W_T's bias at the log share of each label (each word's tag for
    tagging) in the run's train subset; a mask never trains it, so the saved head still holds it."""
    from maskfit.tasks import get_task
    from maskfit.tasktypes import task_type
    from maskfit.train import TrainArgs, split_data, task_labels

    out = tmp_path / "run"
    assert run_cli(["train", "--task", task, "--out", out, "--epochs", "1", "--head-bias", "prior", *FAST],
                   capsys)[0] == 0
    run = load_run(out)
    train = split_data(get_task(task), TrainArgs(**{k: v for k, v in run.info["args"].items()
                                                    if k in TrainArgs.defaults()}))[0]
    labels, kind = task_labels(run.task), task_type(run.task_type)
    counts = torch.zeros(len(labels), dtype=torch.float64)
    for ex in train:
        for i in kind.gold_ids(ex, labels):
            counts[i] += 1
    expected = torch.log((counts + 1) / (counts + 1).sum()).float()
    bias = run.model().get_base_model().classifier.bias
    assert len(set(expected.tolist())) > 1  # the subset's labels are not uniform: the check can fail
    assert torch.allclose(bias, expected)


def test_run_model_matches_returned_model(tmp_path):
    from maskfit.tasks import get_task
    from maskfit.train import TrainArgs, fit

    task = get_task("cola")
    res = fit(task, "minilm", tmp_path / "r", TrainArgs(epochs=1, limit_train=16, limit_eval=8, batch_size=8,
                                                      max_length=32, precision="fp32", lr=1e-2), progress=False)
    reloaded = load_run(tmp_path / "r").model()
    tok = load_run(tmp_path / "r").tokenizer
    batch = tok(["The book was read by John.", "John book the read."], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(res.model(**batch).logits, reloaded(**batch).logits)


@pytest.mark.parametrize("score, loss, gain", [
    (0.70, 0.60, True),    # a higher metric is a gain whatever the loss
    (0.70, 0.90, True),
    (0.684, 0.61, True),   # the same metric (a majority-class plateau) with a lower dev loss
    (0.684, 0.62, False),  # the same metric and the same loss: no gain
    (0.684, 0.63, False),
    (0.60, 0.10, False),   # a lower metric never is, however low the loss
])
def test_dev_gain(score, loss, gain):
    from maskfit.train import dev_gain

    assert dev_gain(score, loss, 0.684, 0.62) is gain
    assert dev_gain(score, loss, float("-inf"), float("inf"))  # the first epoch always is


def _history(*epochs):
    return [{"dev_score": s, "dev_loss": l} for s, l in epochs]


@pytest.mark.parametrize("patience, best_epoch, trained", [
    (0, 6, 7),  # never stops: the best of all seven epochs
    (1, 1, 3),  # epoch 3 is no gain (same score, higher loss): stop there
    (2, 3, 6),  # epoch 4 ties 2's score with a lower loss: a gain; 5 and 6 are not
    (3, 6, 7),  # epoch 7 comes in time
])
def test_early_stopping_replay(patience, best_epoch, trained):
    from maskfit.train import EarlyStopping

    history = _history((0.60, 0.70), (0.70, 0.60), (0.70, 0.65), (0.70, 0.55), (0.65, 0.50), (0.68, 0.40),
                       (0.75, 0.30))
    stopping, n = EarlyStopping.replay(history, patience)
    assert (stopping.best_epoch, n) == (best_epoch, trained)
    assert stopping.best == history[best_epoch]["dev_score"]
    assert stopping.stop is (n < len(history))
    # A resumed run continues exactly where the replayed one was.
    resumed = EarlyStopping.resumed(patience, history[:3], history[1]["dev_score"], 1)
    for record in history[3:n]:
        resumed.update(record["dev_score"], record["dev_loss"])
    assert resumed == stopping


def test_patience_only_truncates_the_run(tmp_path):
    """A run with patience P trains the first epochs of the run without early stopping (same
    history), and keeps the epoch that replaying that run's history with P keeps."""
    from maskfit.tasks import get_task
    from maskfit.train import EarlyStopping, TrainArgs, fit

    common = dict(method="mask", lr=2e-3, epochs=4, limit_train=24, limit_eval=12, batch_size=8, max_length=48,
                  precision="fp32")
    full = fit(get_task("mrpc"), "minilm", tmp_path / "p0", TrainArgs(patience=0, **common), progress=False).metrics
    short = fit(get_task("mrpc"), "minilm", tmp_path / "p1", TrainArgs(patience=1, **common), progress=False).metrics
    assert len(full["epochs"]) == 4
    stopping, n = EarlyStopping.replay(full["epochs"], 1)
    assert len(short["epochs"]) == n
    assert [r["dev_score"] for r in short["epochs"]] == [r["dev_score"] for r in full["epochs"][:n]]
    assert short["best_epoch"] == stopping.best_epoch + 1 and short["best_score"] == stopping.best


def test_default_lr_per_model_method_and_flag():
    """MPNet masks default to their own lr (they collapse at the shared 1e-4); a given --lr always wins."""
    from maskfit.train import DEFAULT_LR, MODEL_LR, TrainArgs

    assert TrainArgs(method="mask").resolved_lr("mpnet") == MODEL_LR["mpnet", "mask"] != DEFAULT_LR["mask"]
    assert TrainArgs(method="mask").resolved_lr("minilm") == DEFAULT_LR["mask"]
    assert TrainArgs(method="finetune").resolved_lr("mpnet") == DEFAULT_LR["finetune"]
    assert TrainArgs(method="mask", lr=2e-4).resolved_lr("mpnet") == 2e-4
