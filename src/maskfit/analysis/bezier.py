"""Appendix B / Fig. 7 of Zhao et al. (2020): a curved low-loss path between two minima.

Following Garipov et al. (2018), the two minima θ0 (the masked model, materialised as
``W ⊙ M``, t = 0) and θ2 (the finetuned model, t = 1), both trained through
``train.fit`` from the same seed, are joined by the quadratic Bézier curve

    φ(t) = (1 − t)² θ0 + 2t(1 − t) θ1 + t² θ2,   t ∈ [0, 1],

over the whole parameter set (classifier included, as in :mod:`.connectivity`). The
bend θ1 starts at the midpoint (θ0 + θ2) / 2, where the curve is the straight line
reparametrised, and is trained to minimise E_{t∼U[0,1]} L(φ(t)): one t is drawn per
batch and the task loss of the model at φ(t) is backpropagated to θ1 only. θ0 and θ2
are plain tensors without gradients, so φ(0) = θ0 and φ(1) = θ2 exactly, always.

No loop of its own: the curve is a module, :class:`BezierCurve`, whose only parameters
are the bend θ1 and whose forward evaluates the model at φ(t) for a t drawn per batch
(``torch.func.functional_call``). The engine trains it like any model
(:meth:`maskfit.engine.Engine.train_epoch`: ``fit``'s data split, encoding, batching and
loss; Adam with a constant lr), and :func:`maskfit.engine.predict_outputs` evaluates
points of the curve through :class:`.common.AtPoint`. The dev score is then read along
the curve and, for comparison, along the straight line between the same minima.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .common import (RAW, AtPoint, Settings, add_common_args, csv_list, eval_examples, get_task, int_list, lerp,
                     majority_score, out_dir, pyplot, save_figure, scale_note, score_point, settings_from_args,
                     tokenizer_for, write_csv, write_json)
from .connectivity import endpoints, gammas

NAME = "bezier"


def bezier_point(theta0: dict, theta1: dict, theta2: dict, t: float) -> dict:
    """φ(t) = (1 − t)² θ0 + 2t(1 − t) θ1 + t² θ2 for floating tensors (others from θ0).

    Differentiable w.r.t. θ1. Exact at the ends: the weights are 1, 0, 0 at t = 0 and
    0, 0, 1 at t = 1, so φ(0) = θ0 and φ(1) = θ2.
    """
    t = float(t)
    a, b, c = (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t
    out = {}
    for k, t0 in theta0.items():
        if k in theta1 and t0.is_floating_point():
            out[k] = a * t0 + b * theta1[k] + c * theta2[k]
        else:
            out[k] = t0
    return out


def init_bend(theta0: dict, theta2: dict) -> dict[str, torch.Tensor]:
    """θ1 at the midpoint, one leaf tensor (requires grad) per floating entry."""
    return {k: ((t0 + theta2[k]) / 2).detach().clone().requires_grad_(True)
            for k, t0 in theta0.items() if t0.is_floating_point()}


class BezierCurve(nn.Module):
    """The model on the curve φ(t): trainable bend θ1, fixed ends θ0 and θ2 (see the module doc).

    In training mode each forward draws t ∼ U[0, 1] from its own seeded generator and
    records it in :attr:`ts`; in eval mode it uses :attr:`t`.
    """

    def __init__(self, model: nn.Module, theta0: dict, theta2: dict, seed: int = 0):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.config = model.config
        self.theta0, self.theta2 = theta0, theta2
        bend = init_bend(theta0, theta2)
        self.keys = list(bend)
        self.bend = nn.ParameterList([nn.Parameter(bend[k].detach()) for k in self.keys])
        self.gen = torch.Generator().manual_seed(seed)
        self.t, self.ts = 0.5, []

    def theta1(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, self.bend))

    def forward(self, **inputs):
        t = self.t
        if self.training:
            t = float(torch.rand((), generator=self.gen))
            self.ts.append(t)
        params = bezier_point(self.theta0, self.theta1(), self.theta2, t)
        return torch.func.functional_call(self.model, params, args=(), kwargs=inputs, strict=False)


def train_bend(base, task, theta0: dict, theta2: dict, settings: Settings, epochs: int = 1, lr: float = 1e-4,
               seed: int = 0, max_steps: int | None = None, tokenizer=None) -> tuple[dict, list[dict]]:
    """Train θ1 by minimising the loss at t ∼ U[0, 1] (one t per batch); see the module doc.

    Returns ``(θ1, history)`` with one ``{"step", "epoch", "t", "loss"}`` per step.
    """
    from ..engine import Engine
    from ..tasktypes import task_type
    from ..train import set_seed, split_data, task_labels

    set_seed(seed)
    train, _, _, _ = split_data(task, settings.train_args("finetune", seed))
    tok = tokenizer or tokenizer_for(settings)
    kind = task_type(task.type)
    feats = kind.encode(train, tok, task_labels(task), settings.max_length)
    engine = Engine(settings.device, "fp32")
    curve = BezierCurve(base, theta0, theta2, seed)
    curve.theta0 = {k: v.to(engine.device) for k, v in theta0.items()}
    curve.theta2 = {k: v.to(engine.device) for k, v in theta2.items()}
    optimizer = torch.optim.Adam(curve.bend.parameters(), lr=lr)
    curve, optimizer = engine.prepare(curve, optimizer)
    history: list[dict] = []
    try:
        for epoch in range(epochs):
            left = None if max_steps is None else max_steps - len(history)
            if left is not None and left <= 0:
                break

            def record(step: int, loss: float, epoch=epoch) -> None:
                history.append({"step": len(history) + 1, "epoch": epoch + 1, "t": curve.ts[-1], "loss": loss})

            engine.train_epoch(curve, optimizer, None, kind, feats, tok.pad_token_id, batch_size=settings.batch_size,
                               seed=seed * 1000 + epoch, on_step=record, max_steps=left)
    finally:
        engine.end()
    return {k: v.detach().cpu() for k, v in engine.unwrap(curve).theta1().items()}, history


def run(task_name: str = "pos", seed: int = 0, settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}", bend_epochs: int = 1, bend_lr: float | None = None,
        n_points: int = 11, max_steps: int | None = None) -> dict:
    """Train (or reuse) the two minima, train the bend, evaluate; write ``bezier.png/.csv/.json``."""
    from ..tasktypes import task_type
    from ..train import task_labels

    settings = settings or Settings()
    out = out_dir(out)
    task = get_task(task_name, settings)
    points, runs, base = endpoints(task, seed, settings, out)
    theta0, theta2 = points["masked"], points["finetuned"]
    lr = bend_lr if bend_lr is not None else (settings.finetune_lr or 1e-4)
    tok = tokenizer_for(settings)
    t0 = time.perf_counter()
    theta1, history = train_bend(base, task, theta0, theta2, settings, bend_epochs, lr, seed, max_steps, tok)
    bend_time = time.perf_counter() - t0
    theta1 = {k: v.detach() for k, v in theta1.items()}
    examples = eval_examples(task, settings)
    feats = task_type(task.type).encode(examples, tok, task_labels(task), settings.max_length)
    rows = []
    for t in gammas(n_points):
        curve = score_point(base, bezier_point(theta0, theta1, theta2, t), task, feats, examples, tok.pad_token_id)
        line = score_point(base, lerp(theta0, theta2, t), task, feats, examples, tok.pad_token_id)
        rows.append({"t": t, "curve_score": curve["score"], "line_score": line["score"],
                     "curve_loss": curve.get("loss"), "line_loss": line.get("loss")})
    write_csv(out / f"{NAME}.csv", rows)
    write_csv(out / f"{NAME}_bend_training.csv", history)
    result = {"analysis": NAME, "task": task_name, "metric": task.metric, "seed": seed, "n_dev": len(examples),
              "start": "masked", "end": "finetuned", "bend": {"epochs": bend_epochs, "lr": lr, "steps": len(history),
                                                              "time_s": bend_time, "max_steps": max_steps},
              "settings": settings.describe(), "endpoint_dev_scores": {k: r.score for k, r in runs.items()},
              "majority_baseline": majority_score(task, settings), "path": rows}
    write_json(out / f"{NAME}.json", result)
    _plot(rows, history, task, settings, out / f"{NAME}.png", result["majority_baseline"])
    return result


def _plot(rows, history, task, settings, path, majority=None):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ts = [r["t"] for r in rows]
    axes[0].plot(ts, [r["curve_score"] for r in rows], marker="o", label="trained Bézier curve φ(t)")
    axes[0].plot(ts, [r["line_score"] for r in rows], marker="s", ls="--", label="straight line (1−t)θ0 + tθ2")
    if majority is not None:
        axes[0].axhline(majority, ls=":", color="gray", label="majority-class baseline")
    axes[0].set_xlabel("t (0 = masked minimum θ0, 1 = finetuned minimum θ2)")
    axes[0].set_ylabel(f"dev {task.metric}")
    axes[0].set_title("dev score along the curve vs the line", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    if history:
        steps = [h["step"] for h in history]
        axes[1].scatter(steps, [h["loss"] for h in history], c=[h["t"] for h in history], cmap="coolwarm", s=14)
        sm = plt.cm.ScalarMappable(cmap="coolwarm", norm=plt.Normalize(0, 1))
        fig.colorbar(sm, ax=axes[1], label="sampled t")
    axes[1].set_xlabel("bend training step")
    axes[1].set_ylabel("train loss at φ(t)")
    axes[1].set_title("training the bend θ1 (one t ~ U[0,1] per batch)", fontsize=10)
    axes[1].grid(alpha=0.3)
    fig.suptitle(f"{task.name}: quadratic Bézier path between the masked and finetuned minima (App. B, Fig. 7)\n"
                 f"{scale_note(settings)}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("bezier", help="App. B / Fig. 7: Bézier curve between the masked and finetuned minima",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="pos")
    p.add_argument("--bend-epochs", type=int, default=1, help="epochs over the train subset for the bend (default 1)")
    p.add_argument("--bend-lr", type=float, help="Adam lr of the bend (default: --finetune-lr)")
    p.add_argument("--bend-steps", type=int, help="stop training the bend after N steps")
    p.add_argument("--points", type=int, default=11, help="points along t from 0 to 1 (default 11)")
    p.set_defaults(func=main)


def main(a) -> int:
    tasks, seeds = csv_list(a.tasks), int_list(a.seeds)
    for t in tasks:
        out = Path(a.out) if len(tasks) == 1 else Path(a.out) / t
        res = run(t, seeds[0], settings_from_args(a), out, a.bend_epochs, a.bend_lr, a.points, a.bend_steps)
        print(f"{t} curve: " + " ".join(f"{r['curve_score']:.3f}" for r in res["path"]))
        print(f"{t} line:  " + " ".join(f"{r['line_score']:.3f}" for r in res["path"]))
        print(f"-> {out / (NAME + '.png')}")
    return 0
