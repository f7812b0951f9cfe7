"""Fig. 4 of Zhao et al. (2020): t-SNE of the top block's [CLS] vectors on dev.

Three models of the same task side by side: the *pretrained* encoder (no training), the
*finetuned* one and the *masked* one (both trained through ``train.fit`` with the same
seed). Each dev example's [CLS] vector is the top transformer block's output at position
0 (``output_hidden_states=True``, last hidden state, before the pooler); t-SNE
(scikit-learn) embeds each model's vectors separately, coloured by gold label.

Besides the picture, ``tsne.json`` gives a number per model: the silhouette score of the
gold labels in the raw [CLS] space (cosine) and the accuracy of a 5-nearest-neighbour
classifier (leave-one-out) there, so "the classes separate" is measured, not eyeballed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import (RAW, Settings, add_common_args, csv_list, eval_examples, get_task, int_list, out_dir,
                     plain_model, pyplot, save_figure, scale_note, settings_from_args, tokenizer_for, train_run,
                     write_csv, write_json)

NAME = "tsne"
MODELS = ("pretrained", "finetuned", "masked")


@torch.no_grad()
def cls_vectors(model, features: list[dict], pad_token_id: int, batch_size: int = 64) -> np.ndarray:
    """Top-block [CLS] vectors (position 0 of the last hidden state), in input order."""
    from ..data.loader import batches
    from ..tasktypes import model_inputs

    model.eval()
    device = next(model.parameters()).device
    out = [None] * len(features)
    for piece, batch in batches(features, pad_token_id, batch_size, order="length", device=device):
        hidden = model(**model_inputs(model, batch), output_hidden_states=True).hidden_states[-1][:, 0].float()
        for j, i in enumerate(piece.indices):
            out[i] = hidden[j].cpu().numpy()
    return np.stack(out)


def separability(x: np.ndarray, y: np.ndarray, k: int = 5) -> dict:
    """Silhouette (cosine) of the gold labels and leave-one-out k-NN accuracy."""
    from sklearn.metrics import silhouette_score

    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(y) - 1)
    nn_idx = np.argsort(-sim, axis=1)[:, :k]
    votes = y[nn_idx]
    pred = np.array([np.bincount(v, minlength=y.max() + 1).argmax() for v in votes])
    sil = float(silhouette_score(x, y, metric="cosine")) if len(set(y.tolist())) > 1 else float("nan")
    return {"silhouette": sil, "knn_accuracy": float((pred == y).mean())}


def run(task_name: str = "sst2", seed: int = 0, settings: Settings | None = None,
        out: str | Path = f"analysis/{NAME}", perplexity: float = 30.0) -> dict:
    """Train (or reuse) the finetuned and masked runs, embed, write ``tsne.png/.csv/.json``."""
    from sklearn.manifold import TSNE

    settings = settings or Settings()
    out = out_dir(out)
    task = get_task(task_name, settings)
    if task.type != "sequence":
        raise ValueError(f"t-SNE needs one gold label per example: {task_name} is a {task.type} task")
    runs = {"finetuned": train_run(task, "finetune", out, settings, seed=seed),
            "masked": train_run(task, "mask", out, settings, seed=seed)}
    models = {"pretrained": plain_model(task, settings, seed), "finetuned": runs["finetuned"].model(),
              "masked": runs["masked"].model()}
    examples = eval_examples(task, settings)
    tok = tokenizer_for(settings)
    labels = list(task.labels)
    from ..tasktypes import task_type

    feats = task_type(task.type).encode(examples, tok, labels, settings.max_length)
    y = np.array([labels.index(ex.label) for ex in examples])
    points, summary = [], {}
    perp = float(min(perplexity, max(2.0, (len(examples) - 1) / 3)))
    for name in MODELS:
        x = cls_vectors(models[name], feats, tok.pad_token_id)
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
        summary[name] = separability(x, y)
        if name in runs:
            summary[name]["dev_score"] = runs[name].score
        for (px, py), lab in zip(emb, y):
            points.append({"model": name, "x": float(px), "y": float(py), "label": labels[lab]})
    write_csv(out / f"{NAME}.csv", points)
    result = {"analysis": NAME, "task": task_name, "metric": task.metric, "seed": seed, "n": len(examples),
              "perplexity": perp, "settings": settings.describe(), "models": summary}
    write_json(out / f"{NAME}.json", result)
    _plot(points, labels, summary, task, settings, out / f"{NAME}.png")
    return result


def _plot(points, labels, summary, task, settings, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    colors = plt.get_cmap("tab10")
    for ax, name in zip(axes, MODELS):
        for i, lab in enumerate(labels):
            pts = [(p["x"], p["y"]) for p in points if p["model"] == name and p["label"] == lab]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=10, alpha=0.7, color=colors(i % 10), label=f"gold {lab}")
        s = summary[name]
        sub = f"5-NN acc {s['knn_accuracy']:.2f}, silhouette {s['silhouette']:.2f}"
        if "dev_score" in s:
            sub = f"dev {task.metric} {s['dev_score']:.3f}; " + sub
        ax.set_title(f"{name}\n{sub}", fontsize=10)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(f"{task.name}: t-SNE of the top block's [CLS] vectors on dev (Fig. 4)\n{scale_note(settings)}",
                 fontsize=11)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("tsne", help="Fig. 4: t-SNE of [CLS] vectors: pretrained, finetuned, masked",
                       description=__doc__, formatter_class=RAW)
    add_common_args(p, NAME, tasks="sst2")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30)")
    p.set_defaults(func=main)


def main(a) -> int:
    tasks, seeds = csv_list(a.tasks), int_list(a.seeds)
    res = None
    for t in tasks:
        out = Path(a.out) if len(tasks) == 1 else Path(a.out) / t
        res = run(t, seeds[0], settings_from_args(a), out, a.perplexity)
        for name, s in res["models"].items():
            extra = f", dev {res['metric']} {s['dev_score']:.4f}" if "dev_score" in s else ""
            print(f"{t} {name:10s}: 5-NN acc {s['knn_accuracy']:.3f}, silhouette {s['silhouette']:.3f}{extra}")
        print(f"-> {out / (NAME + '.png')}")
    return 0
