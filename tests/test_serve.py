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


# ----------------------------------------------------------------------------- hostile requests


def test_body_limit_counts_bytes_received_whatever_the_transfer_encoding():
    """A chunked body declares no length: the middleware stops reading at the limit and answers 413."""
    import asyncio

    from maskfit.serve.app import BodyLimit

    called, pulled, sent = [], [0], []

    async def inner(scope, receive, send):
        called.append(await receive())

    async def receive():  # a 60 MiB upload in 64 KiB chunks, produced only when read
        pulled[0] += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": pulled[0] < 960}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(inner, max_bytes=1 << 20)(scope, receive, send))
    assert not called and pulled[0] == 17  # 16 chunks fit in 1 MiB, the 17th passes it: nothing more is read
    assert sent[0]["status"] == 413 and b"body_too_large" in sent[1]["body"]

    pulled[0], sent[:] = 955, []  # a body under the limit reaches the app whole, in one piece
    asyncio.run(BodyLimit(inner, max_bytes=1 << 20)(scope, receive, send))
    assert called[0]["body"] == b"x" * 65536 * 5 and not called[0]["more_body"] and not sent


def test_http_hostile_bodies(server, setup):
    mt, client = server

    def chunks(n, size=8192):
        for _ in range(n):
            yield b" " * size

    try:  # 400 KB of chunked body against a 64 KB limit: refused, however the client sees it
        r = client.post("/predict", content=chunks(50), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server closed the connection while the client was still sending
    assert client.get("/health").status_code == 200  # and it keeps serving
    small = json.dumps({"task": "sst", "inputs": ["a chunked body under the limit"]}).encode()
    r = client.post("/predict", content=iter([small[:10], small[10:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text

    for raw in [b'{"task": "sst", "inputs": [NaN]}', b'{"task": NaN, "inputs": ["x"]}',
                b'{"task": "sst", "inputs": [["a", Infinity]]}', b'{"task": "sst", "inputs": [1e999]}']:
        r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_body", (raw, r.text)
    r = client.post("/predict", content=b"[" * 30_000 + b"]" * 30_000, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json()


def test_http_input_kind_budget_and_paths(server, setup, tmp_path):
    mt, client = server
    single = make_maskfile(tmp_path / "single.masks", "sequence", ["neg", "pos"], MaskConfig(), 0.05, seed=40)
    pair = tmp_path / "pair-run"
    pair.mkdir()
    make_maskfile(pair / "task.masks", "sequence", ["no", "yes"], MaskConfig(), 0.05, seed=41)
    (pair / "run.json").write_text(json.dumps({"task": {"name": "mrpc"}, "model": "minilm", "method": "mask",
                                               "task_type": "sequence", "labels": ["no", "yes"], "max_length": 64,
                                               "inputs": "pair"}))
    from safetensors.torch import load_file, save_file  # record "single" in the file, as maskfit train does

    meta = read_maskfile(single).meta
    meta["extra"] = {"inputs": "single"}
    save_file(load_file(str(single)), str(single), metadata={"maskfit": json.dumps(meta)})
    mt.register("only-single", single)
    mt.register("only-pair", pair)
    try:
        assert mt.tasks_info()["only-single"]["inputs"] == "single" and mt.tasks_info()["only-pair"]["inputs"] == "pair"
        ok = [("only-single", ["one text"]), ("only-pair", [["a", "b"]]), ("sst", ["x"]), ("sst", [["x", "y"]])]
        for task, inputs in ok:  # files without the record (sst) take both
            assert client.post("/predict", json={"task": task, "inputs": inputs}).status_code == 200
        for task, inputs, needle in [("only-single", [["a", "b"]], "single texts"),
                                     ("only-pair", ["one text"], "sentence pairs")]:
            r = client.post("/predict", json={"task": task, "inputs": inputs})
            assert r.status_code == 422 and needle in r.json()["detail"], r.text
        tasks = client.get("/tasks").json()
        assert tasks["only-pair"]["inputs"] == "pair" and "source" not in tasks["sst"]
        assert str(tmp_path) not in json.dumps(tasks) and str(setup["dir"]) not in json.dumps(tasks)
    finally:
        mt.unregister("only-single")
        mt.unregister("only-pair")

    # work bounds: characters before tokenising, then padded tokens per request
    r = client.post("/predict", json={"task": "sst", "inputs": ["a" * 60_000]})
    assert r.status_code == 413 and "characters" in r.json()["detail"]
    choices = [{"context": "c", "choices": ["x"]}] * 15 + [{"context": "c", "choices": ["y"] * 2000}]
    r = client.post("/predict", json={"task": "arc", "inputs": choices})  # one input pads all 16 to 2000 rows
    assert r.status_code == 413 and r.json()["error"] == "input_too_long", r.text


def test_openapi_documents_every_status(server):
    _, client = server
    schema = client.get("/openapi.json").json()
    examples = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples["ner"]["value"]["inputs"][0] == ["EU", "rejects", "German", "call"]  # one per task served
    predict = schema["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "404", "413", "422", "500"} <= set(predict)
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert set(error["required"]) == {"detail", "error"}
    assert "TaskInfo" in schema["components"]["schemas"] and "PredictResponse" in schema["components"]["schemas"]


def test_api_key_and_limits_of_create_app(mt):
    from fastapi.testclient import TestClient

    from maskfit.errors import ConfigError

    app = create_app(mt, max_inputs=4, max_length=64, max_tokens=40, api_key="s3cret")
    with TestClient(app) as c:
        body = {"task": "sst", "inputs": ["a short text"]}
        assert c.get("/health").json() == {"status": "ok"}  # open for probes, but names no task without the key
        assert c.get("/health", headers={"Authorization": "Bearer s3cret"}).json()["tasks"] == len(mt.tasks)
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}]:
            for r in (c.post("/predict", json=body, headers=headers), c.get("/tasks", headers=headers)):
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict", json=body, headers=auth).status_code == 200
        assert c.get("/tasks", headers=auth).status_code == 200
        r = c.post("/predict", json={"task": "sst", "inputs": ["word " * 20] * 3}, headers=auth)
        assert r.status_code == 413 and "over the limit of 40" in r.json()["detail"]  # 3 × 22 padded tokens
        schema = c.get("/openapi.json").json()
        assert "401" in schema["paths"]["/predict"]["post"]["responses"]
        assert "sst" not in json.dumps(schema)  # the schema is public: no task names in its examples
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for kwargs in [dict(max_inputs=-1), dict(max_length=0), dict(max_tokens=0), dict(max_body_bytes=0),
                   dict(api_key="  ")]:
        with pytest.raises(ConfigError):
            create_app(mt, **kwargs)


def _serve_error(argv, capsys) -> str:
    from maskfit.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refuses a flag's value
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_serve_flags_and_task_files_are_checked(setup, tmp_path, capsys, monkeypatch):
    sst = str(setup["files"]["sst"])
    for flags, needle in [(["--max-inputs", "-1"], "--max-inputs: must be >= 1"),
                          (["--max-length", "-5"], "--max-length: must be >= 1"),
                          (["--max-tokens", "0"], "--max-tokens: must be >= 1"),
                          (["--port", "70000"], "port number"), (["--threads", "0"], "--threads: must be >= 1"),
                          (["--cache-budget-mb", "nan"], "finite number"),
                          (["--task", f"sst={sst}"], "--task sst= is given twice")]:
        line = _serve_error(["serve", "--task", f"sst={sst}", *flags], capsys)
        assert needle in line, line
    monkeypatch.setenv("MASKFIT_API_KEY", " ")
    assert "$MASKFIT_API_KEY) is empty" in _serve_error(["serve", "--task", f"sst={sst}"], capsys)
    monkeypatch.delenv("MASKFIT_API_KEY")

    from safetensors.torch import load_file, save_file

    tensors, meta = load_file(sst), read_maskfile(sst).meta
    bad_meta = {"list.masks": [1, 2], "nolayers.masks": {k: v for k, v in meta.items() if k != "layers"}}
    for name, m in bad_meta.items():
        save_file(tensors, str(tmp_path / name), metadata={"maskfit": json.dumps(m)})
    for name in bad_meta:  # each refused before the server starts, in one line
        line = _serve_error(["serve", "--task", f"t={tmp_path / name}"], capsys)
        assert line.startswith("maskfit: error:") and name in line, line
    run = tmp_path / "run"
    run.mkdir()
    (run / "task.masks").write_bytes(Path(sst).read_bytes())
    for content, needle in [("{}", "no task, model, method, task_type"), ("[1]", "a JSON list"),
                            (json.dumps({"task": {"name": "sst2"}, "model": "minilm", "method": "mask",
                                         "task_type": "sequence", "labels": ["0", "1"], "max_length": "abc"}),
                             "max_length must be an integer")]:
        (run / "run.json").write_text(content)
        line = _serve_error(["serve", "--task", f"t={run}"], capsys)
        assert needle in line, line


@pytest.mark.parametrize("strategy", ["masked", "merge", "cache"])
def test_sequence_tasks_with_different_label_counts_share_a_masked_classifier(tmp_path, strategy):
    """Two sequence tasks whose masked classifiers have 2 and 4 outputs: each served answer equals
    its single-task answer, whatever the order of the switches."""
    files = {"two": make_maskfile(tmp_path / "two.masks", "sequence", ["no", "yes"], MaskConfig(), 0.05, seed=1),
             "four": make_maskfile(tmp_path / "four.masks", "sequence", ["a", "b", "c", "d"], MaskConfig(), 0.2,
                                   seed=2)}
    inputs = [ex.text for ex in read_sst2(DATA / "sst2" / "dev.tsv")[:4]]
    tok, kind = load_tokenizer("minilm"), task_type("sequence")
    reference = {}
    for name, path in files.items():
        model = load_task_model(path)
        feats = kind.encode(kind.parse(inputs), tok, model.labels, 512)
        reference[name] = [o for _, o in predict_outputs(model, kind, feats, tok.pad_token_id, model.labels,
                                                         batch_size=64, order="input")]
    served = MultiTaskModel("minilm", strategy=strategy)
    for name, path in files.items():
        served.register(name, path)
    for name in ["two", "four", "two", "four"]:
        got = served.outputs(name, inputs)
        assert len(got) == len(reference[name])
        for a, b in zip(got, reference[name]):
            assert np.array_equal(np.asarray(a), np.asarray(b))
