"""maskfit sweep: the paper protocol's lr choice (pure), the protocol's rounds and reuse with
stand-in trials, one real sweep on Ray Tune (MiniLM, real MRPC rows) and its rerun, the
one-line errors, and the hint when Ray is missing."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskfit import sweep as sw
from maskfit.cli import main
from maskfit.errors import ConfigError

TINY = ["--task", "mrpc", "--limit-train", "48", "--limit-eval", "32", "--epochs", "1", "--max-length", "32",
        "--threads", "1", "--precision", "fp32"]


def run_cli(args, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- the protocol's choices, pure


def test_next_lrs_extends_the_grid_while_the_best_lr_is_on_its_border():
    ratio = sw.grid_ratio(sw.PAPER_LR_GRID["mask"])
    assert ratio == pytest.approx((1e-3 / 7e-5) ** (1 / 5))  # ~1.70: the grid's own geometric step
    grid = sw.PAPER_LR_GRID["mask"]
    inside = {lr: 0.7 for lr in grid} | {3e-4: 0.8}
    assert sw.next_lrs(inside, ratio) == []
    top = {lr: 0.6 + lr for lr in grid}  # best at 1e-3, the high border
    assert sw.next_lrs(top, ratio) == [1.7e-3]
    bottom = {lr: 0.6 - lr for lr in grid}  # best at 7e-5, the low border
    assert sw.next_lrs(bottom, ratio) == [4.1e-5]
    # the extension bound
    assert sw.next_lrs(top, ratio, extensions=2, max_extensions=3) == [1.7e-3]
    assert sw.next_lrs(top, ratio, extensions=3, max_extensions=3) == []
    # ties: a best lr inside the grid settles it; best on both borders only extends both ways
    assert sw.next_lrs({1e-4: 0.5, 3e-4: 0.5, 1e-3: 0.5}, ratio) == []
    assert sw.next_lrs({1e-4: 0.5, 3e-4: 0.4, 1e-3: 0.5}, 3.0) == [3.3e-5, 3e-3]
    assert sw.next_lrs({3e-4: 0.5}, sw.grid_ratio([3e-4])) == [9.5e-5, 9.5e-4]  # one lr: both borders, ratio √10
    # an extended grid whose best moved inside stops
    assert sw.next_lrs(top | {1.7e-3: 0.9, 2.9e-3: 0.85}, ratio) == []
    with pytest.raises(ConfigError, match="empty"):
        sw.next_lrs({}, ratio)


def test_choose_lr_prefers_a_tied_lr_inside_the_grid_then_the_lowest():
    assert sw.choose_lr({1e-4: 0.5, 3e-4: 0.9, 1e-3: 0.1}) == 3e-4
    assert sw.choose_lr({1e-4: 0.5, 3e-4: 0.5, 1e-3: 0.5}) == 3e-4
    assert sw.choose_lr({1e-4: 0.5, 3e-4: 0.4, 1e-3: 0.5}) == 1e-4
    assert sw.grid_ratio(sw.PAPER_LR_GRID["lora"]) == pytest.approx(30 ** (1 / 3))
    assert [sw.fmt_number(x) for x in (3e-4, 1.7e-3, 1e-5, 0.05, 2, 9.5e-4)] == \
        ["3e-4", "1.7e-3", "1e-5", "0.05", "2", "9.5e-4"]


def test_trials_are_named_from_the_values_they_vary(tmp_path):
    planner = sw.Planner(str(tmp_path), ["--task", "mrpc", "--epochs", "2"])
    t = planner.trial([("method", "lora"), ("lr", "0.0003"), ("blocks", "0,3,5"), ("no-mask-pooler", "true")])
    assert t.key == "lora/lr-3e-4_blocks-0-3-5_no-mask-pooler-true"  # numbers as parsed; a switch as given
    assert t.run_dir == tmp_path / "lora" / "lr-3e-4_blocks-0-3-5_no-mask-pooler-true"
    assert t.command.startswith("maskfit train --task mrpc --epochs 2 --method lora --lr 0.0003 --blocks 0,3,5 "
                                "--no-mask-pooler --threads 1 --out ")
    assert t.info["args"]["epochs"] == 2 and t.info["args"]["method"] == "lora" and t.info["lr"] == 3e-4
    off = planner.trial([("no-mask-pooler", "false")])
    assert off.key == "mask/no-mask-pooler-false" and "--no-mask-pooler" not in off.argv
    assert off.info["mask_config"]["mask_pooler"] is True and planner.trial([]).key == "mask/default"


# --------------------------------------------------------------------------- the protocol's rounds, stand-in trials


def fake_score(method: str, lr: float, seed: int) -> float:
    """A dev score that peaks at lr 2e-3 for masks (past the grid's top) and 3e-5 for finetuning (inside)."""
    peak = {"mask": 2e-3, "finetune": 3e-5}[method]
    return 0.9 - 0.1 * abs(math.log10(lr / peak)) + 0.01 * seed


class FakeExecutor:
    """Writes what a finished trial leaves (its run.json and metrics.json) without training."""

    def __init__(self):
        self.ran: list[str] = []

    def run(self, trials, overwrite):
        for t in trials:
            self.ran.append(t.key)
            t.run_dir.mkdir(parents=True)
            (t.run_dir / "run.json").write_text(json.dumps(t.info))
            s = fake_score(t.method, t.lr, t.seed)
            (t.run_dir / "metrics.json").write_text(json.dumps({
                "completed": True, "best_score": s, "best_epoch": 1, "epochs": [{"dev_score": s}], "metric": "accuracy",
                "lr": t.lr, "wall_time_s": 0.1, "n_train": 48, "args": {"epochs": 1}}))
        return {t.key: None for t in trials}


def test_paper_protocol_rounds_choose_on_dev_and_a_rerun_reuses_everything(tmp_path, capsys, monkeypatch,
                                                                            load_benchmark):
    fake = FakeExecutor()
    monkeypatch.setattr(sw, "make_executor", lambda a, printer: fake)
    out = tmp_path / "sweep"
    args = ["sweep", "--out", out, "--protocol", "paper", "--grid", "method=mask,finetune",
            "--lr-grid", "mask=3e-4,1e-3", "--lr-grid", "finetune=1e-5,3e-5,5e-5", "--seeds", "3", *TINY]
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    result = json.loads((out / "sweep.json").read_text())
    by = {g["method"]: g for g in result["summary"]}
    # mask: best on the top border twice (1e-3, then 3.3e-3), inside after the second extension
    assert by["mask"]["lr_grid"] == [3e-4, 1e-3, 3.3e-3, 1.1e-2]
    assert by["mask"]["extensions"] == 2 and by["mask"]["chosen_lr"] == 3.3e-3
    assert by["mask"]["seeds"] == [0, 1, 2]
    assert by["mask"]["scores"] == pytest.approx([fake_score("mask", 3.3e-3, s) for s in range(3)])
    assert by["mask"]["mean"] == pytest.approx(fake_score("mask", 3.3e-3, 1))
    assert by["mask"]["std"] == pytest.approx(0.01)
    # finetune: best inside its grid at once, no extension
    assert by["finetune"]["lr_grid"] == [1e-5, 3e-5, 5e-5] and by["finetune"]["extensions"] == 0
    assert by["finetune"]["chosen_lr"] == 3e-5
    # the grid trials ran at the first seed only; the chosen lr's first seed was not run twice
    assert len(fake.ran) == len(set(fake.ran)) == 4 + 3 + 2 + 2
    assert (out / "mask" / "lr-3.3e-3_seed-2" / "metrics.json").is_file()
    assert "border" in stdout and "3.3e-3" in (out / "sweep.md").read_text()

    # benchmarks/paper_table.py --profile fidelity turns a sweep.json into its rows
    paper_table = load_benchmark("paper_table")
    rows = {r["method"]: r for r in paper_table.fidelity_rows(result, "minilm", "mrpc")}
    assert rows["mask"] == {"model": "minilm", "task": "mrpc", "metric": "accuracy", "method": "mask", "lr": 3.3e-3,
                            "lr_grid": [3e-4, 1e-3, 3.3e-3, 1.1e-2], "seeds": [0, 1, 2],
                            "scores": [round(100 * fake_score("mask", 3.3e-3, s), 2) for s in range(3)],
                            "mean": round(100 * fake_score("mask", 3.3e-3, 1), 2), "std": 1.0, "train_n": 48,
                            "epochs": 1}
    cmd = paper_table.fidelity_command("sst2", Path("runs/f"), ["--cpus", "8"], ["--device", "cuda"])
    assert cmd[:2] == ["maskfit", "sweep"] and "--limit-train-seed" in cmd and cmd[-2:] == ["--device", "cuda"]

    fake.ran.clear()
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    assert fake.ran == [] and stdout.count("\n  reused ") == 11
    again = json.loads((out / "sweep.json").read_text())
    assert again["summary"] == result["summary"]


@pytest.mark.parametrize("extra, message", [
    (["--grid", "lr"], "--grid takes FLAG=V1,V2"),
    (["--grid", "lr=1e-4,,3e-4"], "empty value"),
    (["--grid", "lr=1e-4", "--grid", "lr=3e-4"], "given twice"),
    (["--grid", "learning-rate=1e-4"], "not a maskfit train flag"),
    (["--grid", "lr=fast"], "invalid float value"),
    (["--grid", "lr=1e-4", "--lr", "3e-4"], "both in --grid and given as a fixed value"),
    (["--grid", "out=a,b"], "sets --out itself"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--protocol", "paper", "--lr-grid", "mask="], "lr grid is empty"),
    (["--protocol", "paper", "--grid", "lr=1e-4,3e-4"], "searches lr itself"),
    (["--seeds", "3"], "go with --protocol paper"),
])
def test_bad_sweeps_are_refused_in_one_line(extra, message, tmp_path, capsys):
    rc, _, err = run_cli(["sweep", "--out", tmp_path / "s", *extra, "--", "--task", "mrpc"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_without_ray_one_line_and_non_zero(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    rc, out, err = run_cli(["sweep", "--out", tmp_path / "s", "--grid", "lr=3e-4,1e-3", "--", *TINY], capsys)
    assert rc != 0
    assert err.strip() == "maskfit: error: maskfit sweep needs Ray: pip install 'maskfit[sweep]'"
    assert "Traceback" not in out + err and not (tmp_path / "s").exists()


def test_fidelity_rows_merge_sources_and_refuse_what_would_skew_a_row(tmp_path, monkeypatch, capsys, load_benchmark):
    # benchmarks/fidelity_seeds.py builds a row from several sweeps; a probe of another flag,
    # another task or the same trial twice would silently change the row, so each is refused
    fs = load_benchmark("fidelity_seeds")

    def sweep(name, task, trials, extra=()):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"train_flags": ["--task", task, "--epochs", "10", *extra], "trials": [
            {"key": f"{m}/{k}", "method": m, "flags": flags, "lr": lr, "seed": seed, "status": "trained",
             "metric": "accuracy", "best": best, "epochs": 10, "n_train": 2147, "wall_time_s": 60.0}
            for k, (m, flags, lr, seed, best) in enumerate(trials)]}))
        return str(path)

    seeds = sweep("seeds", "arc-easy", [("mask", {"lr": "1e-4", "seed": str(s)}, 1e-4, s, b) for s, b in
                                        enumerate([0.52, 0.50, 0.48])]
                  + [("finetune", {"lr": "5e-5", "seed": "0"}, 5e-5, 0, 0.56)], extra=("--patience", "2"))
    grid = sweep("grid", "arc-easy", [("mask", {"lr": "3e-4"}, 3e-4, 0, 0.53), ("mask", {"lr": "7e-5"}, 7e-5, 0, 0.49)])
    results = tmp_path / "fidelity.json"

    def run(*sources, task="arc-easy"):
        monkeypatch.setattr(sys, "argv", ["fidelity_seeds", "--model", "minilm", "--task", task,
                                          "--results", str(results), "--runs", *sources])
        fs.main()

    run(seeds, grid)
    rows = {r["method"]: r for r in json.loads(results.read_text())}
    # the best lr at seed 0 is 3e-4 (53 > 52), which has one seed: the row holds what was run there
    assert rows["mask"]["lr"] == 3e-4 and rows["mask"]["lr_grid"] == [7e-5, 1e-4, 3e-4]
    assert rows["mask"]["scores"] == [53.0] and rows["finetune"]["scores"] == [56.0]
    assert rows["mask"]["lr_scores_first_seed"] == {"7e-05": 49.0, "0.0001": 52.0, "0.0003": 53.0}

    assert "train_sample" not in rows["mask"]

    # a tie at seed 0 is broken as the sweep breaks it (inside the grid first, then the lowest
    # lr), not by the order of the sources: here the lower lr, which holds three seeds
    tie = sweep("tie", "arc-easy", [("mask", {"lr": "3e-4"}, 3e-4, 0, 0.52)])
    run(tie, seeds)
    rows = {r["method"]: r for r in json.loads(results.read_text())}
    assert rows["mask"]["lr"] == 1e-4 and rows["mask"]["scores"] == [52.0, 50.0, 48.0]

    # a row trained on a seeded sample says so; mixed with full-set trials it is refused below
    sampled = sweep("sampled", "arc-easy", [("mask", {"lr": "1e-4", "seed": "3"}, 1e-4, 3, 0.47)],
                    extra=("--limit-train", "1000", "--limit-train-seed", "0"))
    run(sampled)
    rows = {r["method"]: r for r in json.loads(results.read_text())}
    assert rows["mask"]["train_sample"] == "seeded sample of 1000 (the same subset for every seed, subset seed 0)"
    run(seeds, grid)

    blocks = sweep("blocks", "arc-easy", [("mask", {"blocks": "all"}, 1e-4, 0, 0.51)])
    rte = sweep("rte", "rte", [("mask", {"lr": "1e-4"}, 1e-4, 3, 0.55)])
    # a grid or seed run under another early stopping or precision would skew the lr choice or the mean
    patience0 = sweep("p0", "arc-easy", [("mask", {"lr": "3e-4"}, 3e-4, 0, 0.53)], extra=("--patience", "0"))
    fp32 = sweep("fp32", "arc-easy", [("finetune", {"lr": "3e-5"}, 3e-5, 0, 0.55)], extra=("--precision", "fp32"))
    bf16 = sweep("bf16", "arc-easy", [("finetune", {"lr": "7e-5"}, 7e-5, 0, 0.55)], extra=("--precision", "bf16"))
    auto = sweep("auto", "arc-easy", [("finetune", {"lr": "9e-5"}, 9e-5, 0, 0.54)], extra=("--precision", "auto"))
    run(seeds, fp32, auto)  # auto without a recorded resolution is not checked
    assert {r["method"]: r for r in json.loads(results.read_text())}["finetune"]["lr_grid"] == [3e-5, 5e-5, 9e-5]
    for sources, task, message in [((seeds, blocks), "arc-easy", "trial mask/0 sets --blocks all"),
                                   ((seeds, rte), "arc-easy", "is a sweep of task rte, not arc-easy"),
                                   ((seeds, seeds), "arc-easy", "mask lr 0.0001 seed 0 is in both"),
                                   ((seeds,), "rte", "is a sweep of task arc-easy, not rte"),
                                   ((seeds, sampled), "arc-easy", "the sources train on different train sets"),
                                   ((seeds, patience0), "arc-easy", "mask trials differ in patience (2 in"),
                                   ((seeds, fp32, bf16), "arc-easy", "finetune trials differ in precision (fp32 in")]:
        before = results.read_text()
        with pytest.raises(SystemExit) as e:
            run(*sources, task=task)
        assert message in str(e.value) and "\n" not in str(e.value)
        assert results.read_text() == before  # nothing written


def test_fidelity_trial_from_a_resumed_train_log(tmp_path, load_benchmark):
    # a run whose folder was lost is read from its log: best dev, test, precision, and the wall
    # time of its segments (not the gap between a stop and its resume)
    fs = load_benchmark("fidelity_seeds")
    head = " INFO task pos (tagging, 12544 train, dev: dev, 2001) model minilm method lora lr 0.0005 on cpu, {}, 1 process(es)"
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "2026-12-03 10:00:00,000" + head.format("fp32"),
        "2026-12-03 10:10:00,000 INFO epoch 1: loss 0.500 dev word_accuracy 0.9100 (best)",
        "2026-12-03 12:00:00,000 INFO resuming runs/pos: epochs 1-1 done (best 0.9100 at epoch 1), epoch 2 runs next",
        "2026-12-03 12:00:05,000" + head.format("fp32"),
        "2026-12-03 12:10:05,000 INFO epoch 2: loss 0.400 dev word_accuracy 0.9300 (best)",
        "2026-12-03 12:12:05,000 INFO test word_accuracy 0.9200 (best epoch 2)"]) + "\n")
    t = fs.trial_of_log(log, 0, "pos")
    assert (t["method"], t["lr"], t["train_n"], t["precision"]) == ("lora", 5e-4, 12544, "fp32")
    assert round(t["score"], 6) == 93.0 and round(t["test"], 6) == 92.0 and t["wall_s"] == 600 + 720


def test_results_table_says_tuned_only_for_an_lr_with_a_tried_neighbour_on_each_side(load_benchmark):
    # RESULTS.md's goal table: an lr on its grid's border is what the protocol would extend, not a tuned one
    rm = load_benchmark("results_md")
    assert rm.lr_tuned({"lr": 5e-5, "lr_grid": [5e-5]}) == "no"
    assert rm.lr_tuned({"lr": 5e-5, "lr_grid": [3e-5, 5e-5]}) == "border"
    assert rm.lr_tuned({"lr": 3e-5, "lr_grid": [3e-5, 5e-5, 7e-5]}) == "border"
    assert rm.lr_tuned({"lr": 5e-5, "lr_grid": [3e-5, 5e-5, 7e-5]}) == "yes"


# --------------------------------------------------------------------------- real trials on Ray Tune


@pytest.mark.slow
def test_sweep_on_ray_trains_records_and_reuses(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    from maskfit.cli import train_inputs, train_parser
    from maskfit.train import fit

    out = tmp_path / "sweep"
    args = ["sweep", "--out", out, "--grid", "lr=3e-4,1e-3", "--cpus", "2", "--", *TINY]

    # one trial was interrupted after its (only) epoch's checkpoint: the sweep resumes it, not restarts it
    planned = sw.Planner(str(out), TINY).trial([("lr", "1e-3")])
    a = train_parser().parse_args(planned.argv)
    info, task, targs, cfg = train_inputs(a)

    def interrupt(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(task, a.model, a.out, targs, mask_config=cfg, callbacks=[interrupt], progress=False, task_info=info)
    assert (planned.run_dir / "checkpoint").is_dir() and not (planned.run_dir / "metrics.json").exists()

    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    assert "mask/lr-3e-4: epoch 1 dev" in stdout  # reported to Tune by the trainable, each epoch
    result = json.loads((out / "sweep.json").read_text())
    trials = {t["key"]: t for t in result["trials"]}
    assert set(trials) == {"mask/lr-3e-4", "mask/lr-1e-3"}
    assert trials["mask/lr-3e-4"]["status"] == "trained" and trials["mask/lr-1e-3"]["status"] == "resumed"
    for key, t in trials.items():
        metrics = json.loads((out / key / "metrics.json").read_text())
        assert t["best"] == metrics["best_score"] and t["best_epoch"] == metrics["best_epoch"]
        assert t["dev_scores"] == [e["dev_score"] for e in metrics["epochs"]]
        assert metrics["n_train"] == 48 and metrics["lr"] == t["lr"] and t["precision"] == metrics["precision"]
        assert t["command"].startswith("maskfit train --task mrpc") and "--out" in t["command"]
    assert "resuming" in (out / "mask" / "lr-1e-3" / "train.log").read_text()
    md = (out / "sweep.md").read_text()
    assert "| 3e-4 |" in md and "| 1e-3 |" in md and md in stdout

    mtimes = {k: (out / k / "metrics.json").stat().st_mtime_ns for k in trials}
    rc, stdout, err = run_cli(args, capsys)
    assert rc == 0, err
    assert stdout.count("\n  reused mask/") == 2 and "0 to run" in stdout and "epoch 1 dev" not in stdout
    assert {k: (out / k / "metrics.json").stat().st_mtime_ns for k in trials} == mtimes
    assert {t["status"] for t in json.loads((out / "sweep.json").read_text())["trials"]} == {"reused"}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "nice"), reason="POSIX niceness")
def test_local_ray_trials_run_at_the_sweeps_own_priority(tmp_path):
    """Ray would start trial workers at nice 15, where they starve beside any other process; and
    its worker niceness is an increment, so a sweep run under `nice` must not push them further."""
    pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    probe = (
        "import os, sys, ray\n"
        "from maskfit import sweep as sw\n"
        "executor = sw.RayExecutor(sys.argv[1], cpus=1, printer=lambda line: None)\n"
        "executor.start()\n"
        "try:\n"
        "    print(os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()))\n"
        "finally:\n"
        "    executor.stop()\n")
    # Run under `nice -n 3`, as a sweep started beside other work would be.
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.nice(3))
    assert done.returncode == 0, done.stderr[-2000:]
    driver, worker = map(int, done.stdout.split()[-2:])
    assert driver == min(os.nice(0) + 3, 19) and worker == driver
