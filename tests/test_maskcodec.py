"""Mask file format v2: lossless entropy coding per layer, the payload checksum, v1 files,
``maskfit convert`` and ``maskfit inspect``."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from maskfit import MaskfileError, build_model, mask_model, read_maskfile, save_masks
from maskfit.cli import main
from maskfit.maskcodec import decode, encode, entropy_bits
from maskfit.maskfile import pack_bits
from maskfit.masking import MaskConfig


@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (384, 1536), (5, 3, 7)])
@pytest.mark.parametrize("ones", [0.0, 0.001, 0.05, 0.5, 0.95, 0.999, 1.0])
def test_round_trip_is_bit_exact_at_every_density(shape, ones):
    g = torch.Generator().manual_seed(len(shape) * 1000 + int(ones * 1000))
    mask = torch.rand(shape, generator=g) < ones
    codec, payload = encode(mask)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert torch.equal(decode(codec, payload, shape), mask)
    n = mask.numel()
    assert payload.numel() <= (n + 7) // 8  # never above the v1 size
    if n >= 10_000 and 0 < mask.sum() < n:
        bound = entropy_bits(mask) / 8
        assert payload.numel() <= 1.01 * bound + 4, (codec, payload.numel(), bound)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 70), cols=st.integers(1, 70), ones=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_round_trip_random_shapes(rows, cols, ones, seed):
    mask = torch.rand((rows, cols), generator=torch.Generator().manual_seed(seed)) < ones
    codec, payload = encode(mask)
    assert torch.equal(decode(codec, payload, (rows, cols)), mask)


def test_decode_refuses_malformed_codecs():
    mask = torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.9
    codec, payload = encode(mask)
    assert codec["codec"] == "ans"
    for bad in ({"codec": "zip"}, {"codec": "ans", "p1": 1.5}, {"codec": "ans"}, None,
                {"codec": "constant", "value": 2}):
        with pytest.raises(ValueError):
            decode(bad, payload, (200,))
    with pytest.raises(ValueError):
        decode(codec, payload[:-4], (200,))  # a truncated stream
    with pytest.raises(ValueError):
        decode({"codec": "packed"}, payload[:3], (200,))


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory):
    """A tiny masked BERT with layers at very different densities, saved as v2."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    model = build_model("tiny", "sequence", ["a", "b"], config=config)
    mask_model(model, MaskConfig(init_sparsity=0.05, blocks="all"))
    for i, (name, m) in enumerate(sorted((n, m) for n, m in model.named_modules() if hasattr(m, "scores"))):
        with torch.no_grad():  # 0%, 0.1%, 5%, 50%, 100% zeros across layers
            keep = torch.rand(m.scores.shape, generator=torch.Generator().manual_seed(i)) >= \
                [0.0, 0.001, 0.05, 0.5, 1.0][i % 5]
            m.scores.copy_(torch.where(keep, torch.ones_like(m.scores), -torch.ones_like(m.scores)))
    path = save_masks(model, tmp_path_factory.mktemp("v2") / "t.masks", base="tiny")
    return model, path


def test_v2_file_reloads_the_same_masks(v2_file):
    from maskfit import binary_masks

    model, path = v2_file
    mf = read_maskfile(path)
    assert mf.meta["version"] == 2 and set(mf.meta["codecs"]) == set(mf.shapes)
    want = binary_masks(model)
    assert {k: v.tolist() for k, v in mf.masks.items()} == {k: v.tolist() for k, v in want.items()}
    assert {c["codec"] for c in mf.meta["codecs"].values()} >= {"constant", "ans", "packed"}


def _as_v1(src, dst):
    """The same masks written as a version 1 file (1 bit per weight, no checksum)."""
    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["maskfit"])
    mf = read_maskfile(src)
    tensors = {f"mask/{n}": pack_bits(m) for n, m in mf.masks.items()}
    tensors.update({f"head/{n}": t for n, t in mf.head.items()})
    meta = {k: v for k, v in meta.items() if k not in ("codecs", "checksum")}
    meta["version"] = 1
    save_file(tensors, str(dst), metadata={"maskfit": json.dumps(meta)})


def test_v1_files_load_and_convert_to_identical_smaller_v2(v2_file, tmp_path, capsys):
    _, path = v2_file
    v1 = tmp_path / "old.masks"
    _as_v1(path, v1)
    old = read_maskfile(v1)
    assert old.meta["version"] == 1
    assert main(["convert", str(v1), "-o", str(tmp_path / "new.masks")]) == 0
    assert "v1" in capsys.readouterr().out
    new = read_maskfile(tmp_path / "new.masks")
    assert new.meta["version"] == 2
    assert all(torch.equal(old.masks[n], new.masks[n]) for n in old.masks)
    assert all(torch.equal(old.head[n], new.head[n]) for n in old.head)
    assert (tmp_path / "new.masks").stat().st_size < v1.stat().st_size
    assert main(["convert", str(v1)]) == 0  # in place, atomically
    assert read_maskfile(v1).meta["version"] == 2 and not list(tmp_path.glob(".*.tmp"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_corruption_of_the_payload_is_refused(v2_file, tmp_path_factory, data):
    """A flipped byte anywhere in the tensors, or a truncated file, is refused, never decoded."""
    _, path = v2_file
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    out = tmp_path_factory.mktemp("bad") / "bad.masks"
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
        out.write_bytes(bytes(raw[:cut]))
    else:
        pos = data.draw(st.integers(header, len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        out.write_bytes(bytes(raw))
    with pytest.raises(MaskfileError) as ei:
        read_maskfile(out)
    assert "\n" not in str(ei.value)


def test_a_resealed_tamper_is_caught_by_the_codec_checks(v2_file, tmp_path):
    """Even with a recomputed checksum, a layer's stream cut short does not decode."""
    from maskfit.maskfile import payload_checksum

    _, path = v2_file
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["maskfit"])
    tensors = load_file(str(path))
    name = next(n for n, c in meta["codecs"].items() if c["codec"] == "ans")
    tensors[f"mask/{name}"] = tensors[f"mask/{name}"][:-4].clone()
    meta["checksum"] = payload_checksum(tensors)
    save_file(tensors, str(tmp_path / "x.masks"), metadata={"maskfit": json.dumps(meta)})
    with pytest.raises(MaskfileError, match=f"layer {name}"):
        read_maskfile(tmp_path / "x.masks")


def test_inspect_text_and_json(v2_file, capsys):
    _, path = v2_file
    assert main(["inspect", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    mf = read_maskfile(path)
    assert d["format_version"] == 2 and d["checksum"] == "verified" and d["base_model"] == "tiny"
    assert d["labels"] == ["a", "b"] and d["fingerprint"] == mf.meta["fingerprint"]
    assert len(d["layers"]) == len(mf.shapes) and d["masked_weights"] == sum(m.numel() for m in mf.masks.values())
    for r in d["layers"]:
        m = mf.masks[r["layer"]]
        assert r["sparsity"] == pytest.approx(1 - m.float().mean().item())
        assert r["bits_per_weight"] == pytest.approx(8 * r["bytes"] / m.numel())
    assert d["bits_per_weight"] < 1.0
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "v2" in text and "checksum verified" in text and "bits per weight" in text


def test_inspect_of_a_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.masks"
    bad.write_bytes(b"not a mask file")
    assert main(["inspect", str(bad)]) != 0
    err = capsys.readouterr().err.strip()
    assert "corrupt mask file" in err and "\n" not in err
