"""MultiTaskModel and the HTTP server, on the real MiniLM and real task data.

Mask files are made without training: random fixed masks on the real base (different
seeds, sparsities and layer sets per task), saved with ``save_masks``. The reference
answers come from the single-task path, ``maskfit.load_task_model`` +
``maskfit.engine.predict_outputs``, on the same batches.
"""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

import numpy as np

from maskfit import MaskConfig, MaskfileError, build_model, load_task_model, load_tokenizer, mask_model, save_masks
from maskfit.data import read_arc, read_conll2003, read_mrpc, read_sst2
from maskfit.engine import predict_outputs
from maskfit.maskfile import read_maskfile, unpack_bits
from maskfit.masking import MaskedLinear, target_names
from maskfit.serve import MultiTaskModel, create_app
from maskfit.serve.multitask import InputError, InputTooLongError, UnknownTaskError
from maskfit.tasktypes import task_type

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

# name -> (type, labels, MaskConfig, fraction pruned)
SPECS = {
    "sst": ("sequence", ["neg", "pos"], MaskConfig(), 0.05),
    "mrpc": ("sequence", ["no", "yes", "maybe"], MaskConfig(blocks="3-5", mask_classifier=False), 0.3),
    "ner": ("tagging", NER, MaskConfig(), 0.1),
    "arc": ("choice", [], MaskConfig(blocks="4-5", modules=("q", "v", "i")), 0.2),
    "sst_mean": ("sequence", ["neg", "pos"], MaskConfig(), 0.05),  # --pooling mean: its own head model
}


def make_maskfile(path, task_type, labels, config, p, seed, perturb=False, pooling="cls"):
    """A real mask file with random fixed masks (about ``p`` of each layer pruned)."""
    model = build_model("minilm", task_type, labels or ["0"], seed=seed, pooling=pooling)
    if perturb:  # same architecture, different weights: another base
        with torch.no_grad():
            model.base_model.embeddings.word_embeddings.weight[0, 0] += 1.0
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(model.get_submodule(n).weight.shape, generator=g) >= p
             for n in target_names(model, config)}
    mask_model(model, config, masks=masks)
    return save_masks(model, path)


def _inputs():
    sst = [ex.text for ex in read_sst2(DATA / "sst2" / "dev.tsv")[:12]]
    mrpc = [[ex.text, ex.text_pair] for ex in read_mrpc(DATA / "mrpc" / "dev.tsv")[:8]]
    ner = [ex.words for ex in read_conll2003(DATA / "ner" / "valid.txt")[1:12]]
    arc = [{"context": ex.context, "choices": ex.choices} for ex in read_arc(DATA / "swag" / "substitute_arc" / "arc_easy_dev.csv")[:6]]
    # two different batches per task, the second one also exercising raw tagging strings
    return {
        "sst": [sst[:5], sst[5:12]],
        "mrpc": [mrpc[:3], mrpc[3:8]],
        "ner": [ner[:4], [" ".join(w) for w in ner[4:11]]],
        "arc": [arc[:2], arc[2:6]],
        "sst_mean": [sst[:5], sst[5:12]],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("masks")
    files = {}
    for i, (name, (tt, labels, cfg, p)) in enumerate(SPECS.items()):
        files[name] = make_maskfile(d / f"{name}.masks", tt, labels, cfg, p, seed=10 + i,
                                    pooling="mean" if name.endswith("_mean") else "cls")
    inputs = _inputs()
    tok = load_tokenizer("minilm")
    reference = {}
    for name, (tt, labels, _, _) in SPECS.items():
        model = load_task_model(files[name])
        kind = task_type(tt)
        for b, batch_inputs in enumerate(inputs[name]):
            examples = kind.parse(batch_inputs)
            feats = kind.encode(examples, tok, labels or None, 512)
            outputs = [o for _, o in predict_outputs(model, kind, feats, tok.pad_token_id, labels or None,
                                                     batch_size=64, order="input")]
            reference[name, b] = (outputs, [kind.answer(o, labels or None, ex) for o, ex in zip(outputs, examples)])
        del model
    return {"dir": d, "files": files, "inputs": inputs, "reference": reference}


def _order(n, seed=0):
    rng = random.Random(seed)
    keys = [(name, b) for name in SPECS for b in (0, 1)]
    order = keys + [rng.choice(keys) for _ in range(n - len(keys))]
    rng.shuffle(order)
    return order


@pytest.fixture(scope="module")
def mt(setup):
    """One MultiTaskModel with the four tasks, shared by the tests (and the server)."""
    model = MultiTaskModel("minilm", strategy="cache")
    for name, path in setup["files"].items():
        model.register(name, path)
    return model


@pytest.mark.parametrize("strategy,budget", [("masked", None), ("merge", None), ("cache", 1), ("cache", 1 << 30)])
def test_interleaved_answers_equal_single_task_answers_exactly(setup, mt, strategy, budget):
    mt.set_strategy(strategy, budget)
    before = dict(mt.stats)
    for step, (name, b) in enumerate(_order(10, seed=len(strategy) + (budget or 0))):
        inputs = setup["inputs"][name][b]
        ref_logits, ref_answers = setup["reference"][name, b]
        if step % 2:
            assert mt.predict(name, inputs) == ref_answers, (strategy, name, b)
        else:
            outputs = mt.outputs(name, inputs)
            assert len(outputs) == len(ref_logits)
            assert all(np.array_equal(o, r) for o, r in zip(outputs, ref_logits)), (strategy, name, b)
    if strategy == "cache":
        hits, evictions = (mt.stats[k] - before[k] for k in ("cache_hits", "evictions"))
        assert evictions > 0 if budget == 1 else hits > 0 and evictions == 0
    mt.set_strategy("cache", 1 << 30)


def test_tasks_share_one_base_and_keep_masks_packed(setup, mt):
    seq, tag, choice = (mt._models[t].base_model for t in ("sequence", "tagging", "choice"))
    assert tag.encoder is seq.encoder and choice.encoder is seq.encoder
    assert tag.embeddings is seq.embeddings and choice.pooler is seq.pooler and tag.pooler is None
    w = seq.encoder.layer[3].attention.self.query.weight
    assert tag.encoder.layer[3].attention.self.query.weight.data_ptr() == w.data_ptr()
    info = mt.tasks_info()
    assert set(info) == set(SPECS)
    for name, (tt, labels, _, _) in SPECS.items():
        mf = read_maskfile(setup["files"][name])
        task = mt._tasks[name]
        assert all(isinstance(m, MaskedLinear) and m.packed(name).dtype == torch.uint8 for m in task.layers.values())
        assert info[name]["mask_bytes"] == sum((m.numel() + 7) // 8 for m in mf.masks.values())
        assert info[name]["type"] == tt and info[name]["base"] == "minilm"
        assert info[name]["labels"] == (labels or None)
        assert abs(info[name]["sparsity"] - mf.meta["sparsity"]) < 1e-12
        for layer in task.layers:  # the fast unpacking equals the file format's
            assert torch.equal(task.mask(layer), mf.masks[layer])
    before = w.clone()
    mt.predict("sst", setup["inputs"]["sst"][0])
    mt.predict("ner", setup["inputs"]["ner"][0])
    assert torch.equal(w, before)  # the pristine W is never written


def test_unpack_bits_fast_path_matches_the_torch_path():
    g = torch.Generator().manual_seed(0)
    from maskfit.maskfile import pack_bits

    for shape in [(3, 5), (8, 8), (1, 13), (7,)]:
        m = torch.rand(shape, generator=g) > 0.5
        packed = pack_bits(m)
        assert torch.equal(unpack_bits(packed, shape), m)  # numpy on the CPU
        shifts = torch.arange(8, dtype=torch.uint8)  # the device path, written out
        bits = ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:m.numel()].bool().view(*shape)
        assert torch.equal(bits, m)


def test_register_refuses_other_base_and_bad_names(setup, mt, tiny_bert_config):
    other = make_maskfile(setup["dir"] / "other.masks", "sequence", ["a", "b"], MaskConfig(), 0.05, seed=3, perturb=True)
    with pytest.raises(MaskfileError, match="fingerprint"):
        mt.register("other", other)
    tiny = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)
    mask_model(tiny, MaskConfig())
    with pytest.raises(MaskfileError, match="fingerprint"):
        mt.register("tiny", save_masks(tiny, setup["dir"] / "tiny.masks"))
    with pytest.raises(MaskfileError):
        mt.register("missing", setup["dir"] / "nope.masks")
    assert mt.tasks == list(SPECS)
    with pytest.raises(Exception, match="already registered"):
        mt.register("sst", setup["files"]["sst"])
    with pytest.raises(UnknownTaskError):
        mt.predict("nope", ["text"])
    with pytest.raises(InputError):
        mt.predict("sst", [{"context": "x", "choices": ["a"]}])
    with pytest.raises(InputError):
        mt.predict("sst", ["single", ["a", "pair"]])
    with pytest.raises(InputTooLongError):
        mt.predict("sst", ["word " * 600], max_length=32, truncate=False)
    assert len(mt.predict("sst", ["word " * 600], max_length=32)) == 1  # truncated


def test_register_from_run_directory(setup, mt):
    run = setup["dir"] / "run-ner"
    run.mkdir()
    (run / "task.masks").write_bytes(Path(setup["files"]["ner"]).read_bytes())
    (run / "run.json").write_text(json.dumps({"task": {"name": "ner"}, "model": "minilm", "method": "mask",
                                              "task_type": "tagging", "labels": NER, "max_length": 64}))
    info = mt.register("ner-run", run)
    assert info["max_length"] == 64 and info["type"] == "tagging"
    inputs = setup["inputs"]["ner"][0]
    assert mt.predict("ner-run", inputs) == setup["reference"]["ner", 0][1]
    mt.unregister("ner-run")
    with pytest.raises(UnknownTaskError):
        mt.predict("ner-run", inputs)


# ----------------------------------------------------------------------------- HTTP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(setup, mt):
    import uvicorn

    app = create_app(mt, max_inputs=16, max_length=128, max_body_bytes=64_000)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield mt, client
    srv.should_exit = True
    thread.join(timeout=10)


def test_http_statuses(server, setup):
    mt, client = server
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["tasks"] == len(SPECS)
    r = client.get("/tasks")
    assert r.status_code == 200 and set(r.json()) == set(SPECS)
    assert r.json()["ner"]["labels"] == NER and r.json()["arc"]["type"] == "choice"

    for name in SPECS:  # every input kind: text, pairs, word lists, raw strings, choices
        for inputs in setup["inputs"][name]:
            r = client.post("/predict", json={"task": name, "inputs": inputs})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["task"] == name and body["type"] == SPECS[name][0]
            assert body["predictions"] == setup["reference"][name, setup["inputs"][name].index(inputs)][1]

    bad = [
        ({"task": "nope", "inputs": ["x"]}, 404),
        ({"inputs": ["x"]}, 422),
        ({"task": "sst"}, 422),
        ({"task": "sst", "inputs": "not a list"}, 422),
        ({"task": "sst", "inputs": []}, 422),
        ({"task": "sst", "inputs": [{"context": "c", "choices": ["a"]}]}, 422),
        ({"task": "sst", "inputs": ["one", ["two", "three"]]}, 422),
        ({"task": "arc", "inputs": ["not a choice"]}, 422),
        ({"task": "arc", "inputs": [{"context": "c", "choices": []}]}, 422),
        ({"task": "ner", "inputs": [[]]}, 422),
        ({"task": "sst", "inputs": ["x"] * 17}, 413),
        ({"task": "sst", "inputs": ["word " * 200]}, 413),
        ({"task": "mrpc", "inputs": [["short", "word " * 200]]}, 413),
        ({"task": "ner", "inputs": [["w"] * 200]}, 413),
    ]
    for body, status in bad:
        r = client.post("/predict", json=body)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert "detail" in r.json()
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = json.dumps({"task": "sst", "inputs": ["x" * 1000] * 100}).encode()  # over max_body_bytes
    r = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    original = mt.predict  # a model failure is a JSON 500, and the server stays up

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    mt.predict = broken
    try:
        r = client.post("/predict", json={"task": "sst", "inputs": ["x"]})
    finally:
        mt.predict = original
    assert r.status_code == 500 and "boom" in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json={"task": "sst", "inputs": ["still up"]}).status_code == 200


def test_http_concurrent_burst(server, setup):
    mt, client = server
    jobs = _order(16, seed=1)

    def call(job):
        name, b = job
        r = client.post("/predict", json={"task": name, "inputs": setup["inputs"][name][b]}, timeout=60)
        return job, r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, jobs, timeout=120))
    assert len(results) == 16
    for (name, b), status, body in results:
        assert status == 200, body
        assert body["predictions"] == setup["reference"][name, b][1]  # = the single-task answers
    assert client.get("/health").json()["status"] == "ok"
