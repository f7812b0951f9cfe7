"""The per-task mask file: bit packing, exact round trips, size, base checks, corruption,
atomic writes, and every head type."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import maskfit
import maskfit.maskfile as maskfile_mod
from maskfit import (MaskConfig, MaskfileError, binary_masks, build_model, fingerprint, load_masks, load_task_model,
                     mask_model, mask_stats, masked_layers, read_maskfile, save_masks)
from maskfit.heads import random_head_parameters
from maskfit.maskfile import pack_bits, unpack_bits
from maskfit.masking import initial_scores

LABELS = ["negative", "positive"]

# --------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (3, 5), (13, 17), (1, 1), (5, 3, 7), (8,), (64, 3), (0,)])
def test_pack_unpack_round_trip(shape):
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    for density in (0.0, 0.5, 0.97, 1.0):
        mask = torch.rand(shape, generator=g) < density
        packed = pack_bits(mask)
        n = mask.numel()
        assert packed.dtype == torch.uint8 and packed.shape == ((n + 7) // 8,)
        out = unpack_bits(packed, shape)
        assert out.dtype == torch.bool and out.shape == torch.Size(shape)
        assert torch.equal(out, mask)


def test_pack_bits_is_lsb_first_and_zero_padded():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert pack_bits(mask).tolist() == [1, 6]
    assert pack_bits(torch.ones(9, dtype=torch.bool)).tolist() == [255, 1]
    assert pack_bits(torch.tensor([[0, 1], [1, 1]], dtype=torch.bool)).tolist() == [0b1110]


def test_unpack_rejects_wrong_length_or_dtype():
    with pytest.raises(ValueError, match="expected 2"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (3, 5))
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(2, dtype=torch.int32), (3, 5))


# --------------------------------------------------------------------------- real MiniLM round trip

@pytest.fixture(scope="module")
def trained(sst2_batch, tmp_path_factory):
    """MiniLM masked with the paper preset after 2 Adam steps (lr 1e-2), saved to a file.

    Built with head seed 123 so that a fresh model (seed 0) has a different classifier
    and the round trip has to restore the head from the file."""
    model = build_model("minilm", "sequence", LABELS, seed=123)
    mask_model(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        model(**sst2_batch).loss.backward()
        opt.step()
    model.eval()
    inputs = {k: v for k, v in sst2_batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    path = tmp_path_factory.mktemp("maskfile") / "sst2.masks"
    assert save_masks(model, path) == path
    return dict(model=model, path=path, logits=logits, inputs=inputs)


def test_masks_differ_from_init(trained):
    model = trained["model"]
    cfg = model.mask_config
    differs = [n for n, m in binary_masks(model).items()
               if not torch.equal(m, initial_scores(m.shape, cfg, n) >= cfg.threshold)]
    assert len(differs) > 0


def test_load_task_model_gives_identical_logits(trained):
    loaded = load_task_model(trained["path"])
    assert not loaded.training
    assert type(loaded) is type(trained["model"])
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    layers = masked_layers(loaded)
    assert list(layers) == list(masked_layers(trained["model"]))
    assert all(m.scores is None and m.fixed_mask is not None for m in layers.values())
    ref_masks = binary_masks(trained["model"])
    assert all(torch.equal(m.mask(), ref_masks[n]) for n, m in layers.items())
    assert all(not p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        logits = loaded(**trained["inputs"]).logits
    assert torch.equal(logits, trained["logits"])


def test_load_task_model_onto_explicit_base_dir(trained):
    loaded = load_task_model(trained["path"], base_model=maskfit.resolve_model("minilm"))
    with torch.no_grad():
        assert torch.equal(loaded(**trained["inputs"]).logits, trained["logits"])


def test_load_masks_onto_fresh_model_restores_head(trained):
    fresh = build_model("minilm", "sequence", LABELS)  # seed 0: another random head
    assert not torch.equal(fresh.classifier.weight, trained["model"].classifier.weight)
    fresh.train()
    assert load_masks(fresh, trained["path"]) is fresh
    assert not fresh.training
    assert torch.equal(fresh.classifier.weight, trained["model"].classifier.weight)
    assert torch.equal(fresh.classifier.bias, trained["model"].classifier.bias)
    with torch.no_grad():
        assert torch.equal(fresh(**trained["inputs"]).logits, trained["logits"])


def test_resaving_a_loaded_model_gives_the_same_file(trained, tmp_path):
    loaded = load_task_model(trained["path"])
    again = save_masks(loaded, tmp_path / "again.masks")
    assert again.read_bytes() == trained["path"].read_bytes()


def test_metadata(trained):
    mf = read_maskfile(trained["path"])
    meta, model = mf.meta, trained["model"]
    assert meta["format"] == "maskfit.masks" and meta["version"] == 2
    assert meta["base_model"] == "minilm"
    assert meta["fingerprint"] == fingerprint(model)
    assert meta["task_type"] == "sequence" and mf.labels == LABELS
    assert meta["head_class"] == "BertForSequenceClassification"
    assert mf.config == model.mask_config
    assert meta["layers"] == {n: list(m.weight.shape) for n, m in masked_layers(model).items()}
    assert meta["sparsity"] == pytest.approx(mask_stats(model)["sparsity"])
    assert set(mf.head) == {"classifier.weight", "classifier.bias"}


def test_file_size(trained):
    model, path = trained["model"], trained["path"]
    size = os.path.getsize(path)
    masked = mask_stats(model)["total"]
    head_bytes = sum(p.numel() * p.element_size() for p in random_head_parameters(model).values())
    assert head_bytes == (2 * 384 + 2) * 4
    # v2 codes each layer within 1% of its entropy bound n·H(p) (plus a 4-byte word), never above 1 bit/weight
    from maskfit.maskcodec import entropy_bits

    bound = sum(entropy_bits(m) for m in binary_masks(model).values()) / 8
    layers = len(binary_masks(model))
    assert size <= 1.01 * bound + 4 * layers + head_bytes + 64 * 1024
    assert size - head_bytes >= 0.999 * bound  # really the information, nothing dropped
    assert size < math.ceil(masked / 8) + head_bytes  # below the v1 file's 1 bit per weight
    # ~3% of the fp32 model.
    model_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.endswith("scores"))
    assert size / model_bytes < 0.05


# --------------------------------------------------------------------------- wrong base

def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def test_perturbed_base_is_refused(trained):
    other = build_model("minilm", "sequence", LABELS)
    with torch.no_grad():
        other.bert.embeddings.word_embeddings.weight[100, 0] += 1e-3
    fp_file, fp_other = fingerprint(trained["model"]), fingerprint(other)
    assert fp_file != fp_other
    with pytest.raises(MaskfileError) as ei:
        load_masks(other, trained["path"])
    msg = _one_line(ei.value)
    assert fp_file[:12] in msg and fp_other[:12] in msg
    assert "'minilm'" in msg and str(trained["path"]) in msg
    assert masked_layers(other) == {}  # refused before touching the model


def test_tiny_random_base_is_refused(trained, tiny_bert_config):
    tiny = build_model("tiny-bert", "sequence", LABELS, config=tiny_bert_config)
    with pytest.raises(MaskfileError) as ei:
        load_masks(tiny, trained["path"])
    msg = _one_line(ei.value)
    assert "'minilm'" in msg and "'tiny-bert'" in msg
    assert fingerprint(tiny)[:12] in msg
    assert masked_layers(tiny) == {}


def test_fingerprint_ignores_head_and_masks(trained):
    # Same base, other head type, unmasked: same fingerprint.
    tagger = build_model("minilm", "tagging", ["O", "B", "I"])
    assert fingerprint(tagger) == fingerprint(trained["model"])


# --------------------------------------------------------------------------- corrupt files

def _rewrite(src, dst, edit_tensors=None, edit_meta=None, reseal=True):
    """Copy a mask file with edits. ``reseal``: recompute the payload checksum, as a careful
    forger would, so that the checks behind the checksum are the ones tested."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    if edit_tensors:
        edit_tensors(tensors)
    if reseal and edit_tensors:
        d = json.loads(meta["maskfit"])
        d["checksum"] = maskfile_mod.payload_checksum(tensors)
        meta["maskfit"] = json.dumps(d)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(dst), metadata=meta)


def _edit_json(fn):
    def edit(meta):
        d = json.loads(meta["maskfit"])
        fn(d)
        meta["maskfit"] = json.dumps(d)
    return edit


def _make_corrupt(kind, good, path):
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "header-only":
        path.write_bytes(data[:20])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage, not a safetensors file\xff" * 64)
    elif kind == "no-maskfit-metadata":
        save_file({"x": torch.zeros(3)}, str(path), metadata={"other": "thing"})
    elif kind == "no-metadata":
        save_file({"x": torch.zeros(3)}, str(path))
    elif kind == "bad-json":
        _rewrite(good, path, edit_meta=lambda m: m.update(maskfit="{not json"))
    elif kind == "future-version":
        _rewrite(good, path, edit_meta=_edit_json(lambda d: d.update(version=99)))
    elif kind == "short-mask":
        def cut(t):
            k = "mask/bert.encoder.layer.3.attention.self.key"
            t[k] = t[k][:-1].clone()
        _rewrite(good, path, edit_tensors=cut)
    elif kind == "missing-mask":
        _rewrite(good, path, edit_tensors=lambda t: t.pop("mask/classifier"))
    elif kind == "missing-file":
        pass
    elif kind == "directory":
        path.mkdir()
    else:
        raise KeyError(kind)


CORRUPT = ["truncated", "header-only", "empty", "garbage", "no-maskfit-metadata", "no-metadata", "bad-json",
           "future-version", "short-mask", "missing-mask", "missing-file", "directory"]


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_files_raise_one_line_maskfile_error(kind, trained, tmp_path, tiny_bert_config):
    path = tmp_path / "bad.masks"
    _make_corrupt(kind, trained["path"], path)
    with pytest.raises(MaskfileError) as ei:
        read_maskfile(path)
    msg = _one_line(ei.value)
    assert str(path) in msg
    with pytest.raises(MaskfileError) as ei:
        load_task_model(path)
    _one_line(ei.value)
    model = build_model("tiny", "sequence", LABELS, config=tiny_bert_config)
    with pytest.raises(MaskfileError) as ei:
        load_masks(model, path)
    _one_line(ei.value)
    assert masked_layers(model) == {}


def test_head_that_does_not_fit_is_refused(trained, tmp_path):
    path = tmp_path / "head.masks"
    _rewrite(trained["path"], path, edit_tensors=lambda t: t.update({"head/classifier.weight": torch.zeros(3, 384)}))
    with pytest.raises(MaskfileError, match="head tensor classifier.weight") as ei:
        load_task_model(path)
    _one_line(ei.value)


def test_save_unmasked_model_fails(tiny_bert_config, tmp_path):
    model = build_model("tiny", "sequence", LABELS, config=tiny_bert_config)
    with pytest.raises(MaskfileError, match="no masked layers"):
        save_masks(model, tmp_path / "x.masks")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomic writes

@pytest.fixture
def tiny_masked(tiny_bert_config):
    model = build_model("tiny", "sequence", LABELS, config=tiny_bert_config)
    return mask_model(model)


@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_failed_save_leaves_existing_file_and_no_temp_files(tiny_masked, tmp_path, monkeypatch, exc):
    path = tmp_path / "task.masks"
    path.write_bytes(b"the previous mask file")
    real_save = maskfile_mod.save_file
    calls = []

    def crash_midway(tensors, filename, metadata=None):
        calls.append(filename)
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # as if the process died half-way through the write
            f.truncate(os.path.getsize(filename) // 2)
        raise exc("disk full")

    monkeypatch.setattr(maskfile_mod, "save_file", crash_midway)
    with pytest.raises(exc, match="disk full"):
        save_masks(tiny_masked, path)
    assert len(calls) == 1 and os.path.dirname(calls[0]) == str(tmp_path)  # it wrote to a temp file
    assert calls[0] != str(path)
    assert path.read_bytes() == b"the previous mask file"
    assert sorted(os.listdir(tmp_path)) == ["task.masks"]


def test_save_replaces_existing_file_and_creates_dirs(tiny_masked, tmp_path):
    path = tmp_path / "a" / "b" / "task.masks"
    save_masks(tiny_masked, path)
    first = path.read_bytes()
    path.write_bytes(b"stale")
    save_masks(tiny_masked, path)
    assert path.read_bytes() == first  # deterministic, and fully replaced
    assert sorted(os.listdir(path.parent)) == ["task.masks"]


# --------------------------------------------------------------------------- other heads (tiny configs)

def _tiny_config(arch: str):
    from transformers import BertConfig, DistilBertConfig, MPNetConfig, RobertaConfig

    common = dict(vocab_size=128, max_position_embeddings=64)
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, **common)
    if arch == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                             pad_token_id=1, type_vocab_size=1, **common)
    if arch == "mpnet":
        return MPNetConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                           **common)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, **common)
    raise KeyError(arch)


@pytest.mark.parametrize("arch, task", [("bert", "tagging"), ("bert", "choice"), ("roberta", "sequence"),
                                        ("roberta", "choice"), ("mpnet", "tagging"), ("distilbert", "choice")])
def test_other_heads_round_trip(arch, task, tmp_path):
    labels = {"sequence": ["a", "b", "c"], "tagging": ["O", "B-X", "I-X"], "choice": ["0"]}[task]
    name = f"tiny-{arch}"
    m1 = build_model(name, task, labels, seed=1, config=_tiny_config(arch))
    base_state = {k: v.clone() for k, v in m1.base_model.state_dict().items()}
    mask_model(m1, MaskConfig(blocks="all", init_sparsity=0.2))
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 7) if task == "choice" else (2, 7)
    ids = torch.randint(3, 128, shape, generator=g)
    opt = torch.optim.Adam([p for p in m1.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        m1(input_ids=ids).logits.pow(2).mean().backward()
        opt.step()
    m1.eval()
    with torch.no_grad():
        ref = m1(input_ids=ids).logits
    path = save_masks(m1, tmp_path / "t.masks")
    meta = read_maskfile(path).meta
    assert meta["task_type"] == task
    assert meta["labels"] == (None if task == "choice" else labels)

    # Same base weights (copied), another random head (seed 2): the file must restore it.
    m2 = build_model(name, task, labels, seed=2, config=_tiny_config(arch))
    m2.base_model.load_state_dict(base_state)
    head1, head2 = random_head_parameters(m1), random_head_parameters(m2)
    assert set(head1) == set(head2) and any(not torch.equal(head1[k], head2[k]) for k in head1)
    assert fingerprint(m2) == fingerprint(m1)
    load_masks(m2, path)
    with torch.no_grad():
        out = m2(input_ids=ids).logits
    assert out.shape == ref.shape
    assert torch.equal(out, ref)
    assert list(masked_layers(m2)) == list(masked_layers(m1))


@pytest.mark.parametrize("arch, task", [("bert", "sequence"), ("roberta", "sequence"), ("mpnet", "choice"),
                                        ("distilbert", "sequence")])
def test_mean_pooling_reads_the_masked_mean_and_round_trips(arch, task, tmp_path):
    labels = ["a", "b"] if task == "sequence" else ["0"]
    mean = build_model(f"tiny-{arch}", task, labels, seed=1, config=_tiny_config(arch), pooling="mean").eval()
    cls = build_model(f"tiny-{arch}", task, labels, seed=1, config=_tiny_config(arch)).eval()
    cls.load_state_dict(mean.state_dict())  # same weights: only what the head reads differs
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 7) if task == "choice" else (2, 7)
    ids = torch.randint(3, 128, shape, generator=g)
    pad = torch.full(shape[:-1] + (4,), 0)
    padded_ids, attention = torch.cat([ids, pad], -1), torch.cat([torch.ones(shape), torch.zeros(pad.shape)], -1)

    seen = {}
    first_linear = mean.get_submodule({("bert", "sequence"): "bert.pooler.dense", ("mpnet", "choice"): "mpnet.pooler.dense",
                                       ("distilbert", "sequence"): "pre_classifier"}.get((arch, task), "classifier.dense"))
    first_linear.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        plain = mean(input_ids=ids).logits
        out = mean(input_ids=padded_ids, attention_mask=attention.long()).logits
        hidden = cls.base_model(input_ids=ids.reshape(-1, shape[-1])).last_hidden_state
    assert torch.allclose(out, plain, atol=1e-5)  # padding is left out of the mean
    assert torch.allclose(seen["x"], hidden.mean(1), atol=1e-5)  # the head reads the mean, not token 0
    with torch.no_grad():
        assert not torch.allclose(cls(input_ids=ids).logits, plain, atol=1e-4)

    base_state = {k: v.clone() for k, v in mean.base_model.state_dict().items()}
    mask_model(mean, MaskConfig(blocks="all", init_sparsity=0.2))
    path = save_masks(mean, tmp_path / "t.masks")
    assert read_maskfile(path).meta["pooling"] == "mean"
    again = build_model(f"tiny-{arch}", task, labels, seed=5, config=_tiny_config(arch), pooling="mean")
    again.base_model.load_state_dict(base_state)
    load_masks(again, path)
    with torch.no_grad():
        assert torch.equal(again.eval()(input_ids=ids).logits, mean(input_ids=ids).logits)


def test_mean_pooling_is_refused_for_tagging(tiny_bert_config):
    with pytest.raises(maskfit.ModelError, match="tagging heads read every token"):
        build_model("tiny", "tagging", ["O", "B-X"], config=tiny_bert_config, pooling="mean")
