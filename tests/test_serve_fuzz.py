"""The server under generated and concurrent load, on 127.0.0.1 only.

* Schemathesis fuzzes a live server from its own OpenAPI schema (valid and invalid bodies,
  headers, methods): no 5xx, every response conforms to the schema (status, content type,
  body). A fixed number of examples per operation, derandomized, so CI is bounded and
  repeatable. The model is the real MiniLM with random-mask tasks and small request limits
  (4 inputs, 32 tokens), so a generated request costs milliseconds.
* N clients × M requests against a live ``maskfit serve`` process serving a run that
  ``maskfit train`` wrote: every answer equals ``maskfit predict``'s on the same input, no
  5xx, and the server's resident memory does not grow after a first (warm-up) round.

``benchmarks/reliability.py`` runs this file with larger counts (the ``MASKFIT_FUZZ_*`` and
``MASKFIT_LOAD_*`` variables) and reports the figures it writes to ``MASKFIT_RELIABILITY_OUT``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from maskfit import MaskConfig
from maskfit.serve import MultiTaskModel, create_app

from test_serve import DATA, NER, make_maskfile

FUZZ_EXAMPLES = int(os.environ.get("MASKFIT_FUZZ_EXAMPLES", "25"))
CLIENTS = int(os.environ.get("MASKFIT_LOAD_CLIENTS", "4"))
REQUESTS = int(os.environ.get("MASKFIT_LOAD_REQUESTS", "8"))
ROUNDS = int(os.environ.get("MASKFIT_LOAD_ROUNDS", "1"))  # measured rounds after the warm-up round
REPORT = os.environ.get("MASKFIT_RELIABILITY_OUT")
ROOT = Path(__file__).resolve().parents[1]


def _report(key: str, value) -> None:
    """Add figures to the reliability report (only when benchmarks/reliability.py asks for one)."""
    if REPORT:
        path = Path(REPORT)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        path.write_text(json.dumps(data, indent=2))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A uvicorn server on 127.0.0.1 serving three random-mask tasks (one per task type)."""
    import uvicorn

    d = tmp_path_factory.mktemp("fuzz")
    mt = MultiTaskModel("minilm", strategy="cache")
    for i, (name, tt, labels) in enumerate([("sst", "sequence", ["neg", "pos"]), ("ner", "tagging", NER),
                                            ("arc", "choice", [])]):
        mt.register(name, make_maskfile(d / f"{name}.masks", tt, labels, MaskConfig(), 0.05, seed=20 + i))
    app = create_app(mt, max_inputs=4, max_length=32, max_tokens=256, max_body_bytes=32_000)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


TASKS = ("sst", "ner", "arc")


def _with_known_task(pair):
    """Most generated bodies name a task that exists, so they reach parsing, tokenising and the model."""
    case, task = pair
    if task is not None and isinstance(case.body, dict) and "task" in case.body:
        case.body = {**case.body, "task": task}
    return case


def test_generated_requests_get_documented_answers(live):
    """Schemathesis cases from the served schema: positive ones (most naming a registered task) and
    negative ones (bodies the schema forbids). Checks: no 5xx; status code, content type, headers and
    body conform to the schema; schema-invalid data is rejected. (A schema-valid body may still be
    refused, e.g. an input too long, so positive_data_acceptance does not apply.)"""
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    config = schemathesis.Config.from_dict({"cache": {"enabled": False}})  # no .schemathesis/ in the checkout
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {"GET /health", "GET /tasks", "POST /predict"}
    calls: dict[str, dict[int, int]] = {}
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if mode is schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
                continue  # no parameters, no body: nothing to make invalid
            strategy = op.as_strategy(generation_mode=mode)
            if op.path == "/predict" and mode is schemathesis.GenerationMode.POSITIVE:
                strategy = st.tuples(strategy, st.sampled_from((*TASKS, None))).map(_with_known_task)
            counts = calls.setdefault(f"{op.method.upper()} {op.path} ({mode.value})", {})

            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case):
                response = case.call_and_validate(base_url=live, excluded_checks=[positive_data_acceptance],
                                                  timeout=60)
                assert response.status_code < 500, response.text
                counts[response.status_code] = counts.get(response.status_code, 0) + 1

            run()
    requests = sum(sum(c.values()) for c in calls.values())
    predict_ok = calls["POST /predict (positive)"].get(200, 0)
    assert predict_ok > 0, calls  # generated inputs did reach the model
    _report("fuzz", {"max_examples_per_operation_and_mode": FUZZ_EXAMPLES, "requests": requests,
                     "by_operation": {op: dict(sorted(c.items())) for op, c in sorted(calls.items())},
                     "server_errors": sum(n for c in calls.values() for status, n in c.items() if status >= 500)})


# ----------------------------------------------------------------------------- live maskfit serve


def _sst2_dev_texts(tokenizer, n: int, max_tokens: int) -> list[str]:
    from maskfit.data import read_sst2

    texts = []
    for ex in read_sst2(DATA / "sst2" / "dev.tsv"):
        if len(tokenizer(ex.text)["input_ids"]) <= max_tokens:
            texts.append(ex.text)
        if len(texts) == n:
            return texts
    raise AssertionError("not enough short SST-2 dev sentences")


def test_concurrent_clients_get_the_answers_of_maskfit_predict(tmp_path, capsys):
    import psutil

    from maskfit import load_tokenizer
    from maskfit.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--task", "sst2", "--out", str(out), "--epochs", "1", "--limit-train", "16", "--limit-eval",
               "8", "--batch-size", "8", "--max-length", "64", "--blocks", "5", "--quiet", "--precision", "fp32",
               "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    texts = _sst2_dev_texts(load_tokenizer("minilm"), 24, 60)  # under the run's max_length: predict truncates
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("".join(t + "\n" for t in texts))
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--input", str(inputs), "--batch-size", "1", "--threads", "1"]) == 0
    expected = {t: json.loads(line) for t, line in zip(texts, capsys.readouterr().out.splitlines())}
    assert len(expected) == len(texts)

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "maskfit", "serve", "--task", f"sst2={out}", "--host",
                               "127.0.0.1", "--port", str(port), "--threads", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "maskfit serve did not start"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        proc = psutil.Process(server.pid)

        def client(k: int) -> list[tuple[str, int, dict]]:
            got = []
            with httpx.Client(base_url=base, timeout=120) as c:
                for j in range(REQUESTS):
                    text = texts[(k * REQUESTS + j) % len(texts)]
                    r = c.post("/predict", json={"task": "sst2", "inputs": [text]})
                    got.append((text, r.status_code, r.json()))
            return got

        def round_of_clients() -> list:
            with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
                return [x for batch in pool.map(client, range(CLIENTS)) for x in batch]

        results = round_of_clients()  # the first round warms up: its allocations are not growth
        rss_before = proc.memory_info().rss
        for _ in range(ROUNDS):
            results += round_of_clients()
        rss_after = proc.memory_info().rss
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)

    statuses = [s for _, s, _ in results]
    assert len(results) == CLIENTS * REQUESTS * (ROUNDS + 1) and statuses.count(200) == len(results), statuses
    wrong = [t for t, _, body in results if {**body["predictions"][0], "text": t}
             != {k: v for k, v in expected[t].items() if k != "text_pair"}]
    assert not wrong, f"{len(wrong)} answers differ from maskfit predict, e.g. {wrong[0]!r}"
    growth = (rss_after - rss_before) / 2**20
    assert growth < 32, f"server RSS grew by {growth:.1f} MiB over {ROUNDS} rounds after the warm-up"
    _report("load", {"clients": CLIENTS, "requests_per_client_per_round": REQUESTS, "rounds": ROUNDS + 1,
                     "requests": len(results),
                     "distinct_inputs": len(texts), "equal_to_predict": len(results) - len(wrong),
                     "server_errors": sum(s >= 500 for s in statuses),
                     "rss_before_mib": round(rss_before / 2**20, 1), "rss_after_mib": round(rss_after / 2**20, 1)})
