"""Shared fixtures: the real MiniLM tokenizer, real SST-2 rows, tiny random configs.

SST-2 rows are read straight from the shared data directory with the csv module, so
these tests do not depend on ``maskfit.data`` / ``maskfit.tasks``.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

# Two CPU cores shared with other jobs: one intra-op thread is ~3x faster here than
# OpenMP threads fighting for the cores (measured: 3 MiniLM train steps 2.5 s vs 8.6 s).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SST2_TRAIN = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
N_SST2_ROWS = 48


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("paper_table")`` imports ``benchmarks/paper_table.py`` as a module:
    the benchmarks are scripts, not a package, so tests reach their functions this way."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from maskfit import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def sst2_rows() -> list[tuple[str, int]]:
    """A few dozen real SST-2 training rows as ``(sentence, label)``, both labels present."""
    assert SST2_TRAIN.is_file(), f"SST-2 data missing at {SST2_TRAIN}"
    rows = []
    with open(SST2_TRAIN, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        assert header == ["sentence", "label"], header
        for rec in reader:
            rows.append((rec[0].strip(), int(rec[1])))
            if len(rows) == N_SST2_ROWS:
                break
    assert len(rows) == N_SST2_ROWS
    assert {lab for _, lab in rows} == {0, 1}
    return rows


@pytest.fixture(scope="session")
def sst2_batch(minilm_tokenizer, sst2_rows):
    """8 real SST-2 rows (the first 4 of each label), tokenised and padded for MiniLM,
    with integer labels."""
    rows = [r for r in sst2_rows if r[1] == 0][:4] + [r for r in sst2_rows if r[1] == 1][:4]
    enc = minilm_tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=64,
                           return_tensors="pt")
    batch = dict(enc)
    batch["labels"] = torch.tensor([lab for _, lab in rows])
    assert set(batch["labels"].tolist()) == {0, 1}
    return batch


@pytest.fixture
def tiny_bert_config():
    """A fresh, small BERT config (4 blocks, hidden 32); fresh per test because
    ``build_model(config=...)`` writes the labels into it."""
    from transformers import BertConfig

    return BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
