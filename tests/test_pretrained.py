"""The peft-shaped API (from_pretrained / save_pretrained / add_task / set_task / merge_and_unload /
push_to_hub) and transformers.Trainer compatibility, on the real MiniLM and real MRPC rows."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from maskfit import AutoMaskfitModel, MaskConfig, MaskfileError, MaskfitModel, build_model, mask_model, save_masks
from maskfit.masking import MaskedLinear, masked_layers, target_names
from maskfit.model import CONFIG_NAME

ROOT = Path(__file__).resolve().parents[1]


def make_file(path, labels, p, seed, task_type="sequence", perturb=False, config=None):
    """A mask file with random fixed masks (about ``p`` pruned per layer), classifier masked."""
    model = build_model("minilm", task_type, labels, seed=seed)
    if perturb:  # same architecture, other weights: another base
        with torch.no_grad():
            model.base_model.embeddings.word_embeddings.weight[0, 0] += 1.0
    g = torch.Generator().manual_seed(seed)
    config = config or MaskConfig()
    masks = {n: torch.rand(model.get_submodule(n).weight.shape, generator=g) >= p for n in target_names(model, config)}
    mask_model(model, config, masks=masks)
    return save_masks(model, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    return {"two": make_file(d / "two.masks", ["no", "yes"], 0.05, 1),
            "four": make_file(d / "four.masks", ["a", "b", "c", "d"], 0.2, 2),
            "tagging": make_file(d / "tag.masks", ["O", "B-X", "I-X"], 0.1, 3, task_type="tagging"),
            "other_base": make_file(d / "other.masks", ["no", "yes"], 0.05, 4, perturb=True)}


@pytest.fixture(scope="module")
def batch(minilm_tokenizer):
    from maskfit.data import read_mrpc

    rows = read_mrpc(ROOT.parent / "shared" / "data" / "mrpc" / "dev.tsv")[:6]
    return dict(minilm_tokenizer([r.text for r in rows], [r.text_pair for r in rows], padding=True,
                                 return_tensors="pt"))


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def single(files, batch):
    """Each file's logits through the single-task loader."""
    return {k: logits(AutoMaskfitModel.from_pretrained(files[k]), batch) for k in ("two", "four")}


def test_tasks_with_different_label_counts_switch_and_round_trip(files, batch, single, tmp_path):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    assert model.tasks == ["two", "four"] and model.active_task == "two"  # add_task does not switch
    assert torch.equal(logits(model, batch), single["two"])
    model.set_task("four")
    out = logits(model, batch)
    assert out.shape[-1] == 4 and torch.equal(out, single["four"])
    assert model.config.id2label == {0: "a", 1: "b", 2: "c", 3: "d"} and model.labels == ["a", "b", "c", "d"]
    model.set_task("two")
    assert torch.equal(logits(model, batch), single["two"])

    saved = model.save_pretrained(tmp_path / "both")
    assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG_NAME, "two.masks", "four.masks"])
    again = MaskfitModel.from_pretrained(None, saved)
    assert again.tasks == ["two", "four"] and again.active_task == "two"
    assert torch.equal(logits(again, batch), single["two"])
    again.set_task("four")
    assert torch.equal(logits(again, batch), single["four"])
    only = MaskfitModel.from_pretrained("minilm", saved, task="four")
    assert only.tasks == ["four"] and torch.equal(logits(only, batch), single["four"])
    # adding a folder's tasks to an existing model
    base = AutoMaskfitModel.from_pretrained(files["two"], task="first")
    MaskfitModel.from_pretrained(base, saved)
    assert base.tasks == ["first", "two", "four"]


def test_delete_task(files, batch, single):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    with pytest.raises(MaskfileError, match="is active"):
        model.delete_task("two")
    model.delete_task("four")
    assert model.tasks == ["two"] and "four" not in model.heads
    assert not any("four" in m.mask_names for m in masked_layers(model).values())
    assert torch.equal(logits(model, batch), single["two"])


def test_add_task_refusals_are_one_line(files, tmp_path):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    cases = [
        (lambda: model.add_task("x", files["other_base"]), "trained on base"),
        (lambda: model.add_task("x", files["tagging"]), "is a tagging task"),
        (lambda: model.add_task("two", files["four"]), "already has a task named 'two'"),
        (lambda: model.add_task("../evil", files["four"]), "task name"),
        (lambda: model.add_task("x", tmp_path / "missing.masks"), "mask file not found"),
        (lambda: AutoMaskfitModel.from_pretrained(tmp_path), "holds no mask file"),
    ]
    for call, message in cases:
        with pytest.raises(MaskfileError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    assert model.tasks == ["two"]


def test_merge_and_unload_gives_a_plain_model_with_the_same_answers(files, batch, single):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    model.set_task("four")
    layers = masked_layers(model)
    pristine = {n: m.weight.detach().clone() for n, m in layers.items()}
    masks = {n: m.mask().clone() for n, m in layers.items()}
    plain = model.merge_and_unload()
    from transformers import PreTrainedModel

    assert isinstance(plain, PreTrainedModel) and not masked_layers(plain)
    assert all(type(plain.get_submodule(n)) is nn.Linear for n in layers)
    for n in layers:
        assert torch.equal(plain.get_submodule(n).weight, pristine[n] * masks[n])
        assert torch.equal(layers[n].weight, pristine[n])  # the pretrained W was not written
    assert torch.equal(logits(plain, batch), single["four"])
    assert plain.config.id2label[3] == "d"


def test_hub_calls_fail_fast_offline(files, monkeypatch):
    model = AutoMaskfitModel.from_pretrained(files["two"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (lambda: model.push_to_hub("someone/tasks"), lambda: AutoMaskfitModel.from_pretrained("someone/tasks")):
        t = time.perf_counter()
        with pytest.raises(MaskfileError, match="Hugging Face Hub cannot be reached"):
            call()
        assert time.perf_counter() - t < 1.0
    # no offline flag: a host that does not resolve, then a resolver / connect that hangs (the probe gives up)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    import socket

    def hang(*args, **kwargs):
        time.sleep(30)
        raise TimeoutError("timed out")  # as a real connect would: the abandoned probe thread ends quietly

    for patch in (False, True):
        if patch:
            monkeypatch.setattr(socket, "create_connection", hang)
        t = time.perf_counter()
        with pytest.raises(MaskfileError, match="cannot push to 'someone/tasks': the Hugging Face Hub cannot be reached"):
            model.push_to_hub("someone/tasks")
        assert time.perf_counter() - t < 1.0


def test_push_to_hub_then_load_by_repo_id(files, batch, single, tmp_path, monkeypatch):
    """The hub client is replaced by a folder per repo (no network here); maskfit's side is real."""
    import shutil

    import huggingface_hub

    import maskfit.hub

    remote = tmp_path / "remote"

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            (remote / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None):
            shutil.copytree(folder_path, remote / repo_id, dirs_exist_ok=True)
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    def fake_download(repo_id, revision=None, token=None, allow_patterns=None):
        if not (remote / repo_id).is_dir():
            raise FileNotFoundError(f"404 {repo_id}")
        return str(remote / repo_id)

    monkeypatch.setattr(maskfit.hub, "hub_offline", lambda timeout=0.8: False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    assert model.push_to_hub("me/two-tasks") == "https://hub.example/me/two-tasks/commit/1"
    loaded = AutoMaskfitModel.from_pretrained("me/two-tasks")
    assert loaded.tasks == ["two", "four"] and torch.equal(logits(loaded, batch), single["two"])
    with pytest.raises(MaskfileError, match="could not fetch 'me/none' from the hub: 404 me/none"):
        AutoMaskfitModel.from_pretrained("me/none")


def test_trainer_trains_only_scores_and_the_callback_file_reloads(tmp_path, minilm_tokenizer, batch):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from maskfit.data import read_mrpc
    from maskfit.integrations import MaskfitCallback

    rows = read_mrpc(ROOT.parent / "shared" / "data" / "mrpc" / "train.tsv")[:48]
    labels = ["0", "1"]
    enc = minilm_tokenizer([r.text for r in rows], [r.text_pair for r in rows], truncation=True, max_length=64)
    data = Dataset.from_dict({**enc, "label": [labels.index(r.label) for r in rows], "idx": list(range(len(rows)))})
    model = mask_model(build_model("minilm", "sequence", labels), MaskConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith(".scores")}
    scores0 = {n: m.scores.detach().clone() for n, m in masked_layers(model).items()}
    masks0 = {n: m.mask().clone() for n, m in masked_layers(model).items()}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, save_steps=2, learning_rate=0.05,
                             per_device_train_batch_size=12, report_to=[], use_cpu=True, seed=0,
                             lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(minilm_tokenizer),
                      callbacks=[MaskfitCallback()])
    trainer.train()

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".scores") for n in trainable)
    for n, p in model.named_parameters():
        if not n.endswith(".scores"):
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(m.scores, scores0[n]) for n, m in masked_layers(model).items())
    flipped = sum(int((m.mask() != masks0[n]).sum()) for n, m in masked_layers(model).items())
    assert flipped > 0
    for step in (2, 4):
        assert (tmp_path / "out" / f"checkpoint-{step}" / CONFIG_NAME).is_file()
    reloaded = AutoMaskfitModel.from_pretrained(tmp_path / "out")
    model.eval()
    assert torch.equal(logits(reloaded, batch), logits(model, batch))
    assert isinstance(next(iter(masked_layers(reloaded).values())), MaskedLinear)


def test_accelerate_example_runs(tmp_path):
    out = tmp_path / "acc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "accelerate_masks.py"), "--out", str(out),
                        "--limit-train", "32", "--limit-eval", "16", "--epochs", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dev accuracy" in r.stdout and (out / "default.masks").is_file()
    assert AutoMaskfitModel.from_pretrained(out).tasks == ["default"]


def test_server_registers_a_saved_folder(files, tmp_path):
    from maskfit.serve import MultiTaskModel

    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    one = model.save_pretrained(tmp_path / "one")
    model.add_task("four", files["four"])
    both = model.save_pretrained(tmp_path / "both")
    served = MultiTaskModel("minilm")
    assert served.register("two", one)["labels"] == ["no", "yes"]
    with pytest.raises(MaskfileError, match="holds 2 tasks: register each file"):
        served.register("both", both)
    assert served.register("four", both / "four.masks")["labels"] == ["a", "b", "c", "d"]


def test_inspect_a_saved_folder(files, tmp_path, capsys):
    import json

    from maskfit.cli import main

    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    folder = model.save_pretrained(tmp_path / "both")
    assert main(["inspect", str(folder), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert sorted(found) == ["four", "two"] and found["four"]["labels"] == ["a", "b", "c", "d"]
    assert found["two"]["task"] == "two" and found["two"]["format_version"] == 2


def test_stored_heads_follow_the_model_to_another_dtype(files, batch, single):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two")
    model.add_task("four", files["four"])
    model.to(torch.float64)
    model.set_task("four")
    out = logits(model, batch)
    assert out.dtype == torch.float64 and torch.allclose(out.float(), single["four"], atol=1e-4)
    model.set_task("two")
    assert torch.allclose(logits(model, batch).float(), single["two"], atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_tasks_on_a_gpu_answer_as_on_the_cpu(files, batch, single):
    model = AutoMaskfitModel.from_pretrained(files["two"], task="two", device="cuda")
    model.add_task("four", files["four"])
    on_gpu = {k: v.to("cuda") for k, v in batch.items()}
    for name in ("four", "two", "four"):
        model.set_task(name)
        assert torch.allclose(logits(model, on_gpu).cpu(), single[name], atol=1e-3)
    plain = model.merge_and_unload()
    assert torch.allclose(logits(plain, on_gpu).cpu(), single["four"], atol=1e-3)
