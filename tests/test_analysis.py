"""The paper's analyses end to end on a tiny random BERT and a few real rows, plus the
arithmetic they rest on (dissimilarity, interpolation endpoints, Bézier endpoints)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from maskfit.analysis import bezier, common, connectivity, layers, similarity, sparsity_sweep, transfer, tsne
from maskfit.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def tiny_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)


@pytest.fixture
def settings():
    return common.Settings(model="minilm", model_config=tiny_config(), limit_train=32, limit_eval=24, epochs=1,
                           batch_size=16, max_length=32, lr=1e-2, finetune_lr=1e-3, precision="fp32", device="cpu",
                           data_dir=str(DATA))


def _outputs(out: Path, name: str, data: str = "csv"):
    png = out / f"{name}.png"
    assert png.is_file() and png.stat().st_size > 5000, png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.{data}").is_file()
    return json.loads((out / f"{name}.json").read_text()) if (out / f"{name}.json").exists() else None


# --------------------------------------------------------------------------- arithmetic


def test_dissimilarity_by_hand():
    m0 = torch.ones(10, dtype=torch.bool)
    m1, m2 = m0.clone(), m0.clone()
    m1[[0, 1]] = False
    m2[[2, 3]] = False
    assert similarity.dissimilarity(m1, m1) == 0.0
    assert similarity.flip_dissimilarity(m1, m1, m0) == 0.0
    # kept: 8 and 8, both 6 (weights 4..9), either 10 -> 1 - 6/10
    assert similarity.dissimilarity(m1, m2) == pytest.approx(0.4)
    c = similarity.mask_counts(m1, m2, m0)
    s = similarity.scores_from_counts(c)
    assert s["hamming"] == pytest.approx(0.4)
    assert s["flip_dissimilarity"] == 1.0  # disjoint flips
    # independent flips at rates 0.2 and 0.2: 1 - 0.04 / 0.36
    assert s["flip_dissimilarity_if_independent"] == pytest.approx(1 - 0.04 / 0.36)
    assert similarity.dissimilarity(torch.tensor([True, False]), torch.tensor([False, True])) == 1.0
    # one shared flip out of three flipped weights
    m3 = m0.clone()
    m3[[0, 5]] = False
    assert similarity.flip_dissimilarity(m1, m3, m0) == pytest.approx(1 - 1 / 3)
    assert similarity.layer_group("bert.encoder.layer.3.attention.self.query") == "block 3"
    assert similarity.layer_group("bert.pooler.dense") == "pooler"
    assert similarity.layer_group("classifier") == "classifier"


def test_initial_mask_is_the_shared_start(settings):
    from maskfit.masking import MaskConfig, binary_masks, mask_model

    task = common.get_task("sst2", settings)
    cfg = MaskConfig(seed=3)
    model = mask_model(common.plain_model(task, settings, seed=3), cfg)
    for name, m in binary_masks(model).items():
        assert torch.equal(similarity.initial_mask(cfg, name, m.shape), m), name


def test_interpolation_endpoints_reproduce_logits(settings, sst2_batch):
    from maskfit.masking import MaskConfig, mask_model
    from maskfit.tasktypes import task_type

    logits = task_type("sequence").logits
    task = common.get_task("sst2", settings)
    inputs = {k: v for k, v in sst2_batch.items() if k != "labels"}
    base = common.plain_model(task, settings, seed=0)
    # finetuned stand-in: perturbed weights; masked: a masked copy of the same base
    ft = common.plain_model(task, settings, seed=0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mk = mask_model(common.plain_model(task, settings, seed=0), MaskConfig(init_sparsity=0.3, seed=1)).eval()
    a, b = common.param_point(mk), common.param_point(ft)
    with torch.no_grad():
        want_a = logits(mk, inputs)
        want_b = logits(ft.eval(), inputs)
        got0 = logits(common.AtPoint(base, common.lerp(a, b, 0.0)).eval(), inputs)
        got1 = logits(common.AtPoint(base, common.lerp(a, b, 1.0)).eval(), inputs)
        mid = logits(common.AtPoint(base, common.lerp(a, b, 0.5)).eval(), inputs)
    assert torch.allclose(got0, want_a, atol=1e-6, rtol=0)
    assert torch.allclose(got1, want_b, atol=1e-6, rtol=0)
    assert not torch.allclose(mid, want_a, atol=1e-3)
    assert all(torch.equal(common.lerp(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(common.lerp(a, b, 1.0)[k], b[k]) for k in a)


def test_bezier_endpoints_fixed_and_bend_trained(settings):
    task = common.get_task("sst2", settings)
    base = common.plain_model(task, settings, seed=0)
    theta0 = common.param_point(base)
    theta2 = {k: (v + 0.1 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in theta0.items()}
    before0 = {k: v.clone() for k, v in theta0.items()}
    before2 = {k: v.clone() for k, v in theta2.items()}
    theta1, hist = bezier.train_bend(base, task, theta0, theta2, settings, epochs=1, lr=1e-2, seed=0, max_steps=2)
    assert len(hist) == 2 and all(0.0 <= h["t"] <= 1.0 for h in hist)
    assert all(torch.equal(theta0[k], before0[k]) for k in theta0)  # endpoints never updated
    assert all(torch.equal(theta2[k], before2[k]) for k in theta2)
    mid = bezier.init_bend(theta0, theta2)
    assert any(not torch.equal(theta1[k].detach(), mid[k].detach()) for k in theta1)  # the bend moved
    c0 = bezier.bezier_point(theta0, theta1, theta2, 0.0)
    c1 = bezier.bezier_point(theta0, theta1, theta2, 1.0)
    assert all(torch.equal(c0[k], theta0[k]) for k in theta0)
    assert all(torch.equal(c1[k], theta2[k]) for k in theta2)
    # an untrained bend is the straight line, reparametrised: phi(t) = lerp(theta0, theta2, t)
    half = bezier.bezier_point(theta0, mid, theta2, 0.5)
    line = common.lerp(theta0, theta2, 0.5)
    assert all(torch.allclose(half[k], line[k], atol=1e-6) for k in theta0 if theta0[k].is_floating_point())


def test_run_names():
    from maskfit.masking import MaskConfig

    assert common.run_name("finetune", 3) == "finetune/seed-3"
    assert common.run_name("mask", 0, MaskConfig(seed=0)) == "mask/seed-0"
    assert common.run_name("mask", 1, MaskConfig(init_sparsity=0.5, seed=1)) == "mask-sparsity-0.5/seed-1"
    assert common.run_name("mask", 0, MaskConfig(blocks=[], seed=0)) == "mask-blocks-none/seed-0"
    assert common.run_name("mask", 0, MaskConfig(blocks=[3, 4, 5], seed=0)) == "mask-blocks-3-5/seed-0"
    assert common.run_name("mask", 0, MaskConfig(modules=("q", "k"), seed=0)).startswith("mask-cfg-")
    six = layers.mask_config_for([2, 3, 4, 5], 6, 0)
    assert six.blocks is None  # top-down k = 4 of 6 blocks is the preset run


def test_blocks_for():
    assert layers.blocks_for("bottom-up", 2, 6) == [0, 1]
    assert layers.blocks_for("top-down", 2, 6) == [4, 5]
    assert layers.blocks_for("top-down", 0, 6) == []
    assert layers.blocks_for("bottom-up", 6, 6) == list(range(6))


# --------------------------------------------------------------------------- end to end


def test_sparsity_sweep_and_reuse(settings, tmp_path):
    res = sparsity_sweep.run(["sst2"], [0.05, 0.5], [0, 1], settings, tmp_path)
    data = _outputs(tmp_path, "sparsity_sweep")
    assert len(res["runs"]) == 4 and len(res["summary"]) == 2
    assert data["summary"][0]["n"] == 2
    assert 0.0 <= data["majority_baseline"]["sst2"] <= 1.0
    assert all(0.0 <= r["dev_score"] <= 1.0 for r in res["runs"])
    hi = [r for r in res["runs"] if r["init_sparsity"] == 0.5]
    assert all(r["final_sparsity"] > 0.3 for r in hi)  # 50% start is visible in the result
    mtime = (tmp_path / "runs/sst2/mask/seed-0/metrics.json").stat().st_mtime_ns
    again = sparsity_sweep.run(["sst2"], [0.05], [0], settings, tmp_path)  # completed runs are reused
    assert again["runs"][0]["reused"] is True
    assert again["runs"][0]["dev_score"] == res["runs"][0]["dev_score"]
    assert (tmp_path / "runs/sst2/mask/seed-0/metrics.json").stat().st_mtime_ns == mtime
    assert (tmp_path / "runs/sst2/mask-sparsity-0.5/seed-1/task.masks").is_file()
    other = dataclasses.replace(settings, lr=5e-3)
    with pytest.raises(RunError, match="other settings"):
        sparsity_sweep.run(["sst2"], [0.05], [0], other, tmp_path)


def test_layers(settings, tmp_path):
    res = layers.run(["mrpc"], [0, 1, 2], [0], settings, tmp_path)
    _outputs(tmp_path, "layers")
    assert res["n_blocks"] == 2
    assert len(res["summary"]) == 6
    # k = 0 and k = L are shared by both directions: 4 distinct block sets, 4 runs
    assert len(list((tmp_path / "runs" / "mrpc").iterdir())) == 4
    masks = json.loads((tmp_path / "runs/mrpc/mask-blocks-1-1/seed-0/run.json").read_text())["mask_config"]
    assert masks["blocks"] == [1]
    # k = 0 equals the preset of a 2-block model (blocks 2 … L−1: none): the default mask run
    assert (tmp_path / "runs/mrpc/mask/seed-0").is_dir()


def test_tsne(settings, tmp_path):
    res = tsne.run("sst2", 0, settings, tmp_path, perplexity=5)
    _outputs(tmp_path, "tsne")
    assert set(res["models"]) == {"pretrained", "finetuned", "masked"}
    assert res["n"] == 24
    assert all(0 <= m["knn_accuracy"] <= 1 for m in res["models"].values())


def test_similarity(settings, tmp_path):
    res = similarity.run(["sst2", "mrpc", "rte"], 0, settings, tmp_path)
    _outputs(tmp_path, "similarity")
    alls = [g for g in res["groups"] if g["group"] == "all"]
    assert len(alls) == 3
    assert all(0.0 <= g["dissimilarity"] <= 1.0 and 0.0 <= g["flip_dissimilarity"] <= 1.0 for g in alls)
    groups = {g["group"] for g in res["groups"]}
    assert {"pooler", "classifier", "all"} <= groups  # tiny model: blocks 0-1 unmasked by the preset
    # the layer CSV's counts add up to the group rows
    layer_rows, _ = similarity.compare({t: tmp_path / "runs" / t / "mask/seed-0/task.masks" for t in ("sst2", "mrpc")})
    assert sum(r["differ"] for r in layer_rows) == alls[0]["differ"]


def test_connectivity(settings, tmp_path):
    res = connectivity.run("sst2", 0, settings, tmp_path, n_points=3)
    _outputs(tmp_path, "connectivity")
    path = res["path"]
    assert len(path) == 9
    # gamma = 1 on masked -> finetuned is the finetuned run: its dev score is the run's best score
    end = [r for r in path if r["start"] == "masked" and r["gamma"] == 1.0][0]
    assert end["score"] == pytest.approx(res["endpoint_dev_scores"]["finetuned"])
    start = [r for r in path if r["start"] == "masked" and r["gamma"] == 0.0][0]
    assert start["score"] == pytest.approx(res["endpoint_dev_scores"]["masked"])


def test_bezier(settings, tmp_path):
    res = bezier.run("sst2", 0, settings, tmp_path, bend_epochs=1, n_points=3, max_steps=2)
    _outputs(tmp_path, "bezier")
    p = res["path"]
    assert [r["t"] for r in p] == [0.0, 0.5, 1.0]
    assert p[0]["curve_score"] == p[0]["line_score"] == pytest.approx(res["endpoint_dev_scores"]["masked"])
    assert p[-1]["curve_score"] == pytest.approx(res["endpoint_dev_scores"]["finetuned"])
    assert res["bend"]["steps"] == 2


def test_transfer(settings, tmp_path):
    res = transfer.run("sst2", "imdb", [0], settings, tmp_path)
    _outputs(tmp_path, "transfer")
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["mask", "finetune"]
    for r in rows:
        assert r["n_target"] == 24
        assert r["gain"] == pytest.approx(r["target_score"] - r["majority_score"])
        assert r["majority_from"] == "target train split"


def test_cli_help_and_run(tmp_path, capsys):
    from maskfit.cli import build_parser, main

    parser = build_parser()
    for name in ("sparsity-sweep", "layers", "tsne", "similarity", "connectivity", "bezier", "transfer"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["analyze", name, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--limit-train" in out and "--seeds" in out
    a = parser.parse_args(["analyze", "layers", "--tasks", "rte", "--ks", "0,2", "--limit-train", "0"])
    assert a.limit_train is None and a.ks == "0,2" and a.out == "analysis/layers"
    rc = main(["analyze", "similarity", "--tasks", "sst2", "--out", str(tmp_path)])
    assert rc == 2  # one task is a user error, reported in one line
