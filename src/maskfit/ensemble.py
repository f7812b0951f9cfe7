"""Ensembles of trained runs (paper Table 2, rows "Ensem."): vote or average their outputs.

:func:`ensemble` combines per-member score arrays, all shaped ``(n_items, n_classes)``
(an item is an example for sequence / choice tasks and a word for tagging tasks):

* ``"labels"``: each member votes for its argmax; the label with most votes wins. A tie
  is broken deterministically in favour of the **earliest member** (in the order the
  arrays are given) whose vote is among the tied labels, so with two members that
  disagree the first one decides; order the runs best first if you care.
* ``"logits"``: argmax of the mean logits.
* ``"probs"``: argmax of the mean probabilities (softmax of logits first when
  ``given="logits"``).

An argmax over exactly equal scores picks the lowest class index (``numpy.argmax``).

:func:`ensemble_runs` is what ``maskfit ensemble`` calls: it loads each run
(:func:`maskfit.run.load_run`; mask runs through :func:`maskfit.load_task_model`),
predicts the evaluation split through the engine with the same batching as ``maskfit
eval``, scores each member and the ensemble with the task type's scoring, and returns a dict.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .errors import RunError

METHODS = ("labels", "logits", "probs")


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable, with ``-inf`` entries (padded choices) giving 0."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def _stack(arrays) -> np.ndarray:
    arrs = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not arrs:
        raise ValueError("ensemble needs at least one member")
    shape = arrs[0].shape
    if len(shape) != 2:
        raise ValueError(f"each member must be a 2-d array (items, classes), got shape {shape}")
    for i, a in enumerate(arrs):
        if a.shape != shape:
            raise ValueError(f"member {i} has shape {a.shape}, member 0 has {shape}")
    return np.stack(arrs)  # (members, items, classes)


def vote(member_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Majority vote over ``member_labels`` (members, items); ties → earliest member's vote."""
    member_labels = np.asarray(member_labels)
    n_members, n_items = member_labels.shape
    out = np.empty(n_items, dtype=np.int64)
    for j in range(n_items):
        counts = np.bincount(member_labels[:, j], minlength=n_classes)
        tied = set(np.flatnonzero(counts == counts.max()).tolist())
        out[j] = next(int(v) for v in member_labels[:, j] if int(v) in tied)
    return out


def ensemble(arrays: Sequence, method: str = "labels", given: str = "logits") -> np.ndarray:
    """Predicted class index per item from the members' ``arrays`` (see the module doc).

    ``arrays``: one ``(n_items, n_classes)`` array per member; ``given``: whether they
    hold ``"logits"`` or ``"probs"``. ``method="logits"`` needs logits.
    """
    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; choose from {', '.join(METHODS)}")
    if given not in ("logits", "probs"):
        raise ValueError(f"given must be 'logits' or 'probs', not {given!r}")
    stack = _stack(arrays)
    if method == "labels":
        return vote(stack.argmax(-1), stack.shape[-1])
    if method == "logits":
        if given != "logits":
            raise ValueError("method 'logits' averages logits: pass logits (given='logits')")
        return stack.mean(0).argmax(-1)
    probs = softmax(stack) if given == "logits" else stack
    return probs.mean(0).argmax(-1)


# --------------------------------------------------------------------------- runs


def item_rows(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-example outputs (see :mod:`maskfit.tasktypes`) → one row per item: an example of a
    sequence or choice task, a word of a tagging task. Choice rows are padded with ``-inf``."""
    rows = [np.atleast_2d(o) for o in outputs]
    width = max((r.shape[1] for r in rows), default=0)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-np.inf) if r.shape[1] < width else r
            for r in rows]
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def outputs_of(item_predictions: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Predicted classes per item → one-hot outputs shaped like ``like`` (so a TaskType can score them)."""
    out, k = [], 0
    for o in like:
        n = 1 if o.ndim == 1 else o.shape[0]
        hot = np.eye(o.shape[-1], dtype=np.float32)[item_predictions[k:k + n]]
        out.append(hot.reshape(o.shape))
        k += n
    return out


def ensemble_runs(run_dirs: Sequence[str | os.PathLike], method: str = "labels", split: str | None = None,
                  data_dir: str | os.PathLike | None = None, batch_size: int = 64, limit: int | None = None,
                  device: str = "cpu", precision: str = "fp32") -> dict:
    """Score each run and their ensemble on ``split`` (default: the task's eval split).

    All runs must be of the same task (same task arguments, type and labels); they
    may differ in seed, method or base model. ``limit`` keeps the first N examples.
    Members are predicted by the engine on ``device`` with the batching of ``maskfit
    eval``. Returns ``{"task", "split", "metric", "method", "n_examples", "members":
    [{"run", "method", "model", "score"}], "member_mean", "member_best", "ensemble"}``.
    """
    from .engine import Engine
    from .run import load_run
    from .tasks import get_task
    from .tasktypes import task_type

    if method not in METHODS:
        raise RunError(f"unknown ensemble method {method!r}; choose from {', '.join(METHODS)}")
    if len(run_dirs) < 2:
        raise RunError("an ensemble needs at least two run directories")
    runs = [load_run(p) for p in run_dirs]
    first = runs[0].info
    for r in runs[1:]:
        for key in ("task", "task_type", "labels"):
            if r.info.get(key) != first.get(key):
                raise RunError(f"{r.path} and {runs[0].path} are runs of different tasks ({key} differs): "
                               "an ensemble combines runs of one task")
    args = dict(first["task"]) if isinstance(first["task"], dict) else {"name": first["task"]}
    name = args.pop("name")
    task = get_task(name, data_dir=data_dir, **{k: v for k, v in args.items() if v is not None and k != "data_dir"}) \
        if data_dir is not None else runs[0].task
    split = split or task.eval_split
    examples = task.load(split)
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise RunError(f"task {name}: the {split} split is empty")
    kind, labels = task_type(task.type), (list(task.labels) if task.type != "choice" else None)
    if any(g is None for g in kind.golds(examples)):
        raise RunError(f"task {name}: the {split} split is not labelled; ensembles are scored on a labelled split")
    engine = Engine(device, precision)
    try:
        arrays, members, outputs = [], [], None
        for r in runs:
            feats = kind.encode(examples, r.tokenizer, labels, r.max_length)
            outputs = engine.predict(r.model(device=engine.device), kind, feats, r.tokenizer.pad_token_id, labels,
                                     batch_size=batch_size)
            score, _ = kind.score(task.metric, outputs, examples, labels)
            arrays.append(item_rows(outputs))
            members.append({"run": str(r.path), "method": r.info.get("method"), "model": r.info.get("model"),
                            "score": score})
    finally:
        engine.end()
    width = max(a.shape[1] for a in arrays)
    arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-np.inf) for a in arrays]
    preds = ensemble(arrays, method=method, given="logits")
    score, _ = kind.score(task.metric, outputs_of(preds, outputs), examples, labels)
    scores = [m["score"] for m in members]
    return {"task": name, "split": split, "metric": task.metric, "method": method, "n_examples": len(examples),
            "members": members, "member_mean": float(np.mean(scores)), "member_best": float(np.max(scores)),
            "ensemble": score}
