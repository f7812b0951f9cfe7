"""Reliability figures: hostile and careless input, fuzzing and concurrent load. Not a timing benchmark:
it counts the cases tried and the failures.

    .venv/bin/python benchmarks/reliability.py                      # defaults below, ~15 min on 2 busy cores
    .venv/bin/python benchmarks/reliability.py --fuzz-examples 50   # shorter

1. the hostile-input regression tests (tests/test_resume_safety.py, test_readers.py, test_serve.py);
2. the property-based reader tests (tests/test_readers_props.py) with ``--props-examples`` per property;
3. tests/test_serve_fuzz.py with larger counts: schemathesis cases from the served OpenAPI schema
   (``--fuzz-examples`` per operation and mode) and ``--clients`` × ``--requests`` × ``--rounds``
   against a live ``maskfit serve`` whose answers are compared with ``maskfit predict``;
4. the schemathesis CLI (every phase, every check but positive_data_acceptance) against a live
   ``maskfit serve`` of random-mask tasks, on 127.0.0.1;
5. a 60 MiB chunked upload to that server while another client sends requests.

Writes benchmarks/results/reliability.json and reliability.md (RESULTS.md's "Reliability"
section, via benchmarks/results_md.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))


def pytest(files: list[str], env: dict | None = None, extra: tuple[str, ...] = ()) -> tuple[str, str]:
    """(the pytest summary line, the whole output) of one run in a fresh process."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra, *files]
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    summary = next((line.strip("= ") for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed)", line)),
                   "no summary")
    if proc.returncode != 0:
        print(out[-6000:], file=sys.stderr)
    return summary, out


def counts(summary: str) -> dict:
    return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", summary)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mask_files(folder: Path) -> dict[str, Path]:
    """Three tasks (single-text sequence, tagging, choice) with random fixed masks on the real MiniLM."""
    import torch

    from maskfit import MaskConfig, build_model, mask_model, save_masks
    from maskfit.masking import target_names
    from maskfit.tasks import NER_LABELS

    files = {}
    for seed, (name, kind, labels, extra) in enumerate([("sst", "sequence", ["neg", "pos"], {"inputs": "single"}),
                                                        ("ner", "tagging", list(NER_LABELS), {}),
                                                        ("arc", "choice", None, {})]):
        model = build_model("minilm", kind, labels or ["0"], seed=seed)
        g = torch.Generator().manual_seed(seed)
        mask_model(model, MaskConfig(), masks={n: torch.rand(model.get_submodule(n).weight.shape, generator=g) >= 0.05
                                               for n in target_names(model, MaskConfig())})
        files[name] = save_masks(model, folder / f"{name}.masks", extra=extra)
    return files


def live_server_checks(folder: Path, examples: int, workers: int) -> dict:
    """schemathesis run (every phase) and a 60 MiB chunked upload against a live maskfit serve."""
    import httpx

    files = mask_files(folder)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_cmd = [sys.executable, "-m", "maskfit", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads",
                 "1", "--max-inputs", "8", "--max-length", "64", "--max-tokens", "512",
                 *[f"--task={n}={p}" for n, p in files.items()]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(serve_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()[-2000:])
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("maskfit serve did not start") from None
                time.sleep(0.3)
        report = folder / "schemathesis.json"
        st_cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{base}/openapi.json",
                  "--max-examples", str(examples), "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                  "--seed", "1", "--generation-database", "none", "--workers", str(workers), "--no-color",
                  "--report", "json", "--report-json-path", str(report)]
        st = subprocess.run(st_cmd, capture_output=True, text=True, env=env, cwd=folder)  # its cache goes there
        r = json.loads(report.read_text())
        out["schemathesis_cli"] = {
            "command": "schemathesis " + shlex.join(st_cmd[1:]).replace(str(report), "REPORT.json").replace(
                f":{port}/", ":PORT/"),
            "exit_code": st.returncode, "test_cases": r["test_cases"]["generated"],
            "failures": r["test_cases"]["with_failures"], "errors": r["test_cases"]["errored"],
            "phases": {k: v["status"] for k, v in r["phases"].items()}, "operations": r["operations"]["tested"]}

        # a 60 MiB chunked upload (no Content-Length) while another client keeps asking
        answered, stop = [], threading.Event()

        def other_client():
            with httpx.Client(base_url=base, timeout=60) as c:
                while not stop.is_set():
                    answered.append(c.post("/predict", json={"task": "sst", "inputs": ["fine"]}).status_code)

        def chunks():
            for _ in range(960):
                yield b" " * 65536

        t = threading.Thread(target=other_client)
        t.start()
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                status = c.post("/predict", content=chunks(), headers={"content-type": "application/json"}).status_code
        except httpx.TransportError as e:
            status = f"connection closed by the server ({type(e).__name__})"
        time.sleep(1)
        stop.set()
        t.join()
        out["chunked_upload"] = {"body_mib": 60, "limit_mib": 8, "status": status,
                                 "other_requests": len(answered), "other_requests_ok": answered.count(200)}
        out["server_alive"] = server.poll() is None and httpx.get(f"{base}/health", timeout=5).status_code == 200
        out["serve_command"] = "maskfit " + shlex.join(serve_cmd[3:]).replace(str(folder), "MASKS").replace(
            f"--port {port}", "--port PORT")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--props-examples", type=int, default=300, help="examples per reader property")
    ap.add_argument("--fuzz-examples", type=int, default=300, help="schemathesis examples per operation and mode")
    ap.add_argument("--cli-examples", type=int, default=100, help="schemathesis CLI examples per operation")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client per round")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up round")
    a = ap.parse_args()
    command = "python benchmarks/reliability.py " + " ".join(sys.argv[1:])
    result = {"command": command.strip()}

    hostile = ["tests/test_resume_safety.py", "tests/test_readers.py", "tests/test_serve.py"]
    summary, _ = pytest(hostile)
    result["regression"] = {"files": hostile, "summary": summary, **counts(summary)}
    print("regression:", summary, flush=True)

    summary, out = pytest(["tests/test_readers_props.py"], {"MASKFIT_PROPS_EXAMPLES": str(a.props_examples)},
                          ("--hypothesis-show-statistics",))
    # hypothesis' statistics: per test, per phase; the generate phase is the cases tried (shrinking retries failures)
    generate = [block for block in out.split("- during ") if block.startswith("generate phase")]
    cases = [tuple(map(int, m)) for b in generate for m in re.findall(r"(\d+) passing, (\d+) failing", b)]
    result["properties"] = {"summary": summary, **counts(summary), "examples_per_property": a.props_examples,
                            "cases_passing": sum(p for p, _ in cases), "cases_failing": sum(f for _, f in cases),
                            "properties": len(re.findall(r"^tests/test_readers_props\.py::\S+:$", out, re.M))}
    print("properties:", summary, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        summary, _ = pytest(["tests/test_serve_fuzz.py"], {
            "MASKFIT_FUZZ_EXAMPLES": str(a.fuzz_examples), "MASKFIT_LOAD_CLIENTS": str(a.clients),
            "MASKFIT_LOAD_REQUESTS": str(a.requests), "MASKFIT_LOAD_ROUNDS": str(a.rounds),
            "MASKFIT_RELIABILITY_OUT": str(report)})
        figures = json.loads(report.read_text()) if report.exists() else {}
        result["serve_tests"] = {"summary": summary, **counts(summary), **figures}
        print("serve fuzz + load:", summary, flush=True)
        result.update(live_server_checks(Path(tmp), a.cli_examples, workers=2))
    print(json.dumps({k: v for k, v in result.items() if k in ("schemathesis_cli", "chunked_upload")}, indent=1))

    RES.mkdir(parents=True, exist_ok=True)
    (RES / "reliability.json").write_text(json.dumps(result, indent=2) + "\n")
    (RES / "reliability.md").write_text(markdown(result))
    print((RES / "reliability.md").read_text())


def markdown(r: dict) -> str:
    reg, props, serve = r["regression"], r["properties"], r["serve_tests"]
    fuzz, load, cli, up = serve.get("fuzz", {}), serve.get("load", {}), r["schemathesis_cli"], r["chunked_upload"]
    fails = lambda d: d.get("failed", 0) + d.get("error", 0) + d.get("errors", 0)  # noqa: E731
    rows = [
        ("hostile-input regression tests (crafted checkpoint pickles, chunked bodies, NaN, changed data, "
         "duplicate columns, locks, flags, ...)", f"{reg.get('passed', 0)} tests", fails(reg),
         "pytest " + " ".join(reg["files"])),
        (f"reader properties (hypothesis, {props['properties']} property tests × up to {props['examples_per_property']} "
         "examples: csv/tsv/jsonl/CoNLL/CoNLL-U round trips, encodings, any bytes)",
         f"{props['cases_passing']:,} cases", props["cases_failing"] + fails(props),
         f"MASKFIT_PROPS_EXAMPLES={props['examples_per_property']} pytest tests/test_readers_props.py"),
        (f"server fuzz, schemathesis cases from the OpenAPI schema (positive and negative, "
         f"≤ {fuzz.get('max_examples_per_operation_and_mode')} per operation and mode; schema conformance checked)",
         f"{fuzz.get('requests', 0):,} requests", fuzz.get("server_errors", "not run"),
         f"MASKFIT_FUZZ_EXAMPLES={fuzz.get('max_examples_per_operation_and_mode')} pytest tests/test_serve_fuzz.py"),
        (f"schemathesis CLI against a live `maskfit serve` (phases: "
         f"{', '.join(k for k, v in cli['phases'].items() if v == 'success')}; every check but "
         "positive_data_acceptance)", f"{cli['test_cases']:,} test cases", cli["failures"] + cli["errors"],
         cli["command"]),
        (f"{load.get('clients')} concurrent clients × {load.get('requests_per_client_per_round')} requests × "
         f"{load.get('rounds')} rounds (the first a warm-up) against a live `maskfit serve`, answers compared "
         "with `maskfit predict`",
         f"{load.get('requests', 0):,} requests, {load.get('equal_to_predict', 0):,} equal",
         load.get("server_errors", 0) + load.get("requests", 0) - load.get("equal_to_predict", 0) if load else "not run",
         f"MASKFIT_LOAD_CLIENTS={load.get('clients')} MASKFIT_LOAD_REQUESTS={load.get('requests_per_client_per_round')} "
         f"MASKFIT_LOAD_ROUNDS={(load.get('rounds') or 1) - 1} pytest tests/test_serve_fuzz.py"),
    ]
    out = ["# Reliability", "", f"`{r['command']}` (127.0.0.1 only; 2 shared CPU cores; counts, not timings).", "",
           "| check | cases tried | failures | command |", "|---|---:|---:|---|"]
    out += [f"| {what} | {n} | {f} | `{cmd}` |" for what, n, f, cmd in rows]
    out += ["", f"Server memory over the load test: {load.get('rss_before_mib')} MiB after the warm-up round, "
            f"{load.get('rss_after_mib')} MiB after {load.get('rounds', 1) - 1} more round(s).",
            f"A {up['body_mib']} MiB chunked upload (no Content-Length; limit {up['limit_mib']} MiB) got: {up['status']}; "
            f"meanwhile another client's {up['other_requests']} requests were answered ({up['other_requests_ok']} "
            f"with 200), and the server was {'still' if r.get('server_alive') else 'NOT'} serving afterwards.",
            f"Server for the last two: `{r['serve_command']}`.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
