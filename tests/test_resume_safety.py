"""What a careless user or an attacker can do to a run directory and the training command.

An interrupted run is made for real: ``maskfit train`` on 32 real SST-2 rows (a csv in the
test's folder, so the data can be changed), stopped by a Ctrl-C in epoch 2 after epoch 1's
checkpoint. Then the run directory or the data is tampered with, and the same command is
run again: it must refuse in one line (``maskfit: error: ...``), never run code from the
checkpoint, never mix data, never overwrite what is not a matching run.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskfit.cli import main
from maskfit.engine import Engine

FAST = ["--batch-size", "8", "--max-length", "32", "--quiet", "--precision", "fp32", "--lr", "1e-3",
        "--blocks", "5", "--modules", "q,v", "--patience", "0", "--threads", "1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("maskfit: error:"), err
    assert "Traceback" not in err
    return lines[0]


def write_csv(path: Path, rows, flip: bool = False) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for text, label in rows:
            w.writerow([text, ("neg", "pos")[label ^ flip]])
    return path


class Evil:
    """A pickle that creates ``marker`` when it is loaded (the payload of a crafted checkpoint)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def interrupted(tmp_path, sst2_rows, capsys, monkeypatch):
    """(argv, run dir, train csv, rows): a real run interrupted in epoch 2, epoch 1 checkpointed."""
    train = write_csv(tmp_path / "train.csv", sst2_rows[:32])
    write_csv(tmp_path / "dev.csv", sst2_rows[32:])
    out = tmp_path / "run"
    argv = ["train", "--task", f"csv:{train}", "--dev", tmp_path / "dev.csv", "--text-column", "text",
            "--label-column", "label", "--out", out, "--epochs", "2", *FAST]
    calls = []
    original = Engine.train_epoch

    def ctrl_c_in_epoch_2(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Engine, "train_epoch", ctrl_c_in_epoch_2)
        rc, _, err = run_cli(argv, capsys)
    assert rc == 130 and "run the same command again to resume" in err
    progress = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert progress["epoch"] == 0 and not (out / "metrics.json").exists()
    return argv, out, train, sst2_rows[:32]


def test_crafted_checkpoint_files_are_refused_and_never_run(interrupted, tmp_path, capsys):
    argv, out, _, _ = interrupted
    state = out / "checkpoint" / "epoch-0"
    clean = tmp_path / "clean-state"
    shutil.copytree(state, clean)
    marker = tmp_path / "PWNED"
    for name, write in [("random_states_0.pkl", lambda p: p.write_bytes(pickle.dumps(Evil(marker)))),
                        ("optimizer.bin", lambda p: torch.save(Evil(marker), p)),
                        ("scheduler.bin", lambda p: p.write_bytes(pickle.dumps({"x": Evil(marker)}, protocol=2))),
                        ("notes.pkl", lambda p: torch.save([Evil(marker)], p))]:
        shutil.rmtree(state)
        shutil.copytree(clean, state)
        write(state / name)
        line = one_line_error(*run_cli(argv, capsys)[::2])
        assert f"{name} holds more than tensors and plain data" in line and "--overwrite" in line, line
        assert not marker.exists(), f"loading {name} ran its payload"
    shutil.rmtree(state)
    shutil.copytree(clean, state)
    (state / "random_states_0.pkl").unlink()  # accelerate would resume silently without it
    assert "no random state for process 0" in one_line_error(*run_cli(argv, capsys)[::2])
    torch.save({"step": 0}, state / "random_states_0.pkl")  # plain data, but no random states in it
    assert "does not hold the random states" in one_line_error(*run_cli(argv, capsys)[::2])

    shutil.copy(clean / "random_states_0.pkl", state / "random_states_0.pkl")
    progress_file = out / "checkpoint" / "progress.json"
    progress = json.loads(progress_file.read_text())
    progress_file.write_text(json.dumps({**progress, "state": str(clean)}))  # pointing outside the run
    assert "corrupt or names no checkpoint" in one_line_error(*run_cli(argv, capsys)[::2])
    progress_file.write_text(json.dumps(progress))

    rc, _, err = run_cli(argv, capsys)  # the untouched checkpoint resumes
    assert rc == 0, err
    log = (out / "train.log").read_text()
    assert "epochs 1-1 done" in log and "epoch 2 runs next" in log and log.count("epoch 2:") == 1
    assert not marker.exists()


def test_resume_refuses_changed_data_and_names_what_changed(interrupted, capsys):
    argv, out, train, rows = interrupted
    original = train.read_bytes()
    write_csv(train, rows, flip=True)  # every label flipped between the kill and the re-run
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert f"the train split ({train}) has changed" in line and "--overwrite" in line, line
    train.write_bytes(original)
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["splits"]["train"]["file"] == str(train) and len(info["data"]["splits"]["train"]["blake2b"]) == 32
    assert "bytes" in info["data"]["hashed"] and info["inputs"] == "single"

    lr = argv.index("--lr") + 1
    line = one_line_error(*run_cli(argv[:lr] + ["2e-3"] + argv[lr + 1:], capsys)[::2])
    assert "holds a different run (--lr was 0.001, now 0.002)" in line, line
    line = one_line_error(*run_cli(argv + ["--init-sparsity", "0.1"], capsys)[::2])
    assert "--init-sparsity was 0.05, now 0.1" in line, line


def test_non_empty_out_without_a_matching_run_is_refused(interrupted, tmp_path, capsys):
    argv, out, _, _ = interrupted
    (out / "run.json").unlink()  # a checkpoint is there, but no run.json: it used to restart from epoch 1
    masks = (out / "task.masks").read_bytes()
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert "is not empty and holds no maskfit run" in line and "checkpoint" in line and "--overwrite" in line
    assert (out / "task.masks").read_bytes() == masks  # nothing was touched

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    out_arg = argv.index("--out") + 1
    line = one_line_error(*run_cli(argv[:out_arg] + [mine] + argv[out_arg + 1:], capsys)[::2])
    assert "thesis.tex" in line and (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in mine.iterdir() if not p.name.startswith(".")) == ["thesis.tex"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    line = one_line_error(*run_cli(argv[:out_arg] + [a_file] + argv[out_arg + 1:], capsys)[::2])
    assert "is a file, not a folder" in line


def test_leftover_temp_files_are_removed_on_resume(interrupted, capsys):
    argv, out, _, _ = interrupted
    leftovers = [out / ".task.masks.k3x9q1.tmp", out / "checkpoint" / ".progress.json.a8s7d6.tmp"]
    for p in leftovers:
        p.write_bytes(b"half-written by a killed process")
    (out / ".notes.tmp").write_text("not ours")
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert not any(p.exists() for p in leftovers) and (out / ".notes.tmp").read_text() == "not ours"
    assert json.loads((out / "metrics.json").read_text())["completed"]


def test_a_second_trainer_on_the_same_out_is_refused(tmp_path, sst2_rows, capsys):
    """Two real processes: the first holds the run directory; kill -9 leaves no stale lock."""
    from filelock import FileLock

    train = write_csv(tmp_path / "train.csv", sst2_rows)
    out = tmp_path / "run"
    argv = ["train", "--task", f"csv:{train}", "--text-column", "text", "--label-column", "label", "--out", out,
            "--epochs", "50", *FAST]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "maskfit", *map(str, argv)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.json").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first trainer did not start"
            time.sleep(0.1)
        line = one_line_error(*run_cli(argv, capsys)[::2])
        assert "another maskfit train is using" in line, line
        assert first.poll() is None  # the first one is unharmed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    lock = FileLock(str(out / ".maskfit.lock"), timeout=0)
    lock.acquire()  # the OS dropped the dead process's lock
    lock.release()


@pytest.mark.parametrize("labels, needle", [
    (["pos"] * 6, "every training example has the label 'pos'"),
    (["0", "1", "0.0", "1", "0", "1"], "labels '0' and '0.0' are the same number written two ways"),
])
def test_training_data_that_cannot_train_is_refused(tmp_path, capsys, labels, needle):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"text {i},{lab}\n" for i, lab in enumerate(labels)))
    rc, _, err = run_cli(["train", "--task", f"csv:{train}", "--text-column", "text", "--label-column", "label",
                          "--out", tmp_path / "r", *FAST], capsys)
    assert needle in one_line_error(rc, err)


def test_non_utf8_training_file_is_named_and_encoding_reads_it(tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_bytes("text,label\ncaf\u00e9,pos\nna\u00efve,pos\n".encode("latin-1"))
    args = ["train", "--task", f"csv:{train}", "--text-column", "text", "--label-column", "label", "--out",
            tmp_path / "r", *FAST]
    line = one_line_error(*run_cli(args, capsys)[::2])
    assert f"{train}:2: not utf-8-sig text" in line and "--encoding" in line
    # read with its encoding, the file gets as far as its real problem: one class only
    line = one_line_error(*run_cli(args + ["--encoding", "latin-1", "--overwrite"], capsys)[::2])
    assert "every training example has the label 'pos'" in line
    assert "unknown encoding" in one_line_error(*run_cli(args + ["--encoding", "nope"], capsys)[::2])


@pytest.mark.parametrize("argv, needle", [
    (["train", "--task", "sst2", "--out", "X", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--task", "sst2", "--out", "X", "--threshold", "nan"], "threshold must be a finite number, got nan"),
    (["train", "--task", "sst2", "--out", "X", "--modules", "q,q"], "lists a module twice: q,q"),
    (["train", "--task", "sst2", "--out", "X", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--task", "sst2", "--out", "X", "--lr", "inf"], "--lr must be a positive number"),
    (["train", "--task", "sst2", "--out", "X", "--warmup-ratio", "1"], "--warmup-ratio must be in [0, 1)"),
    (["train", "--task", "sst2", "--out", "X", "--init-sparsity", "1.5"], "init_sparsity must be in [0, 1], got 1.5"),
    (["predict", "--run", "X", "--text", "x", "--output", "."], "is a folder"),
    (["predict", "--run", "X", "--text", "x", "--output", "no/such/dir/out.jsonl"], "does not exist"),
])
def test_bad_flags_get_one_line_errors(argv, needle, tmp_path, capsys):
    argv = [str(tmp_path / a) if a == "X" else str(tmp_path) if a == "." else a for a in argv]
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert needle in line, line
    assert not (tmp_path / "X").exists()  # refused before anything was written


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--run", "X", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["eval", "--run", "X", "--limit", "-3"], "--limit: must be >= 1"),
    (["predict", "--run", "X", "--text", "a", "--batch-size", "x"], "--batch-size: expected an integer"),
    (["train", "--task", "sst2", "--out", "X", "--threads", "0"], "--threads: must be >= 1"),
    (["memory", "--tasks", "0"], "--tasks: must be >= 1"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / a) if a == "X" else a for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize("content, needle", [
    ("{}", "no task, model, method, task_type"), ("[]", "a JSON list, not an object"), ("{", "corrupt"),
    ('{"task": {"name": "sst2"}, "model": "minilm", "method": "mask", "task_type": "sequence", '
     '"labels": ["0", "1"], "max_length": -5}', "max_length must be an integer >= 2"),
    ('{"task": {"name": "sst2", "evil": "x"}, "model": "minilm", "method": "mask", "task_type": "sequence", '
     '"labels": ["0", "1"]}', "'task' holds evil"),
    ('{"task": "sst2", "model": "minilm", "method": "mask", "task_type": "sequence"}', "'task' must be an object"),
    ('{"task": {"name": "sst2"}, "model": "minilm", "method": "magic", "task_type": "sequence"}', "unknown method"),
])
def test_malformed_run_json_gets_one_line_errors(tmp_path, capsys, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(content)
    for argv in (["eval", "--run", run], ["predict", "--run", run, "--text", "x"]):
        assert needle in one_line_error(*run_cli(argv, capsys)[::2])


def test_predict_checks_pairs_against_what_the_run_was_trained_on(interrupted, capsys):
    _, out, _, _ = interrupted  # best-so-far masks of epoch 1; trained on single texts
    line = one_line_error(*run_cli(["predict", "--run", out, "--text", "a", "--text-pair", "b"], capsys)[::2])
    assert "trained on single texts" in line
    rc, stdout, err = run_cli(["predict", "--run", out, "--text", "a gripping film"], capsys)
    assert rc == 0 and json.loads(stdout)["label"] in ("neg", "pos"), err
