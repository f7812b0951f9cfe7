"""Memory table arithmetic (paper Table 8 for BERT-base) and measured RSS growth."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from maskfit import MaskConfig, build_model, mask_model, save_masks
from maskfit.masking import masked_layers, target_names
from maskfit.memory import count_params, format_table, measure_resident, memory_table, plot_memory

BERT_BASE_PARAMS = 109_482_240  # bert-base-uncased: embeddings + 12 blocks + pooler
BLOCK_LINEAR_WEIGHTS = 7_077_888  # 4 × 768² (q, k, v, ao) + 2 × 768 × 3072 (i, o)
POOLER_WEIGHTS = 589_824  # 768²
CLASSIFIER = 768 * 2 + 2


def test_bert_base_counts_match_paper_table8():
    c = count_params(BertConfig())
    assert c["pretrained_params"] == BERT_BASE_PARAMS
    assert c["masked_weights"] == 10 * BLOCK_LINEAR_WEIGHTS + POOLER_WEIGHTS == 71_368_704
    assert c["blocks"] == list(range(2, 12))
    assert c["head_params"] == CLASSIFIER and c["head_masked_weights"] == 768 * 2
    assert c["mask_file_bytes"] == (71_368_704 + 1536) // 8 + 4 * CLASSIFIER
    every = count_params(BertConfig(), blocks="all")
    assert every["masked_weights"] == 12 * BLOCK_LINEAR_WEIGHTS + POOLER_WEIGHTS


def test_memory_table_rows():
    rows = memory_table(BertConfig(), n_tasks=3)
    assert [r["n_tasks"] for r in rows] == [1, 2, 3]
    per_copy = BERT_BASE_PARAMS + CLASSIFIER
    per_task = (71_368_704 + 1536) // 8 + 4 * CLASSIFIER
    for n, r in enumerate(rows, 1):
        assert r["finetune_params"] == n * per_copy
        assert r["finetune_bytes"] == 4 * n * per_copy
        assert r["mask_fp32_params"] == BERT_BASE_PARAMS + n * CLASSIFIER
        assert r["mask_bits"] == n * (71_368_704 + 1536)
        assert r["mask_bytes"] == 4 * BERT_BASE_PARAMS + n * per_task
        assert r["ratio"] == pytest.approx(r["finetune_bytes"] / r["mask_bytes"])
    # one task costs 8.9 MB of bits against a 438 MB finetuned copy
    assert rows[1]["mask_bytes"] - rows[0]["mask_bytes"] == pytest.approx(8.93e6, rel=1e-3)
    assert rows[1]["finetune_bytes"] - rows[0]["finetune_bytes"] == pytest.approx(437.9e6, rel=1e-3)
    table = format_table(rows)
    assert "| 1 | 109,483,778 | 437.9 |" in table and table.count("\n") == 4


def test_minilm_counts_and_plot(tmp_path):
    rows = memory_table("minilm", n_tasks=4)
    assert rows[0]["pretrained_params"] == 22_713_216
    assert rows[0]["masked_weights"] == 4 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384  # blocks 2-5 + pooler
    out = plot_memory(rows, tmp_path / "mem.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measured_rss_grows_with_registered_masks(tmp_path):
    model = build_model("minilm", "sequence", ["a", "b"])
    cfg = MaskConfig()
    g = torch.Generator().manual_seed(0)
    mask_model(model, cfg, masks={n: torch.ones(model.get_submodule(n).weight.shape, dtype=torch.bool)
                                  for n in target_names(model, cfg)})
    files = []
    for i in range(3):
        for layer in masked_layers(model).values():
            layer.fixed_mask = torch.rand(layer.weight.shape, generator=g) > 0.05
        files.append(save_masks(model, tmp_path / f"t{i}.masks"))
    rows = measure_resident("minilm", files)
    assert [r["n_tasks"] for r in rows] == [0, 1, 2, 3]
    # the file is entropy-coded (5% zeros: ~0.3 bits per weight); a registered task holds the
    # decoded 1-bit masks, 903 KB for MiniLM
    packed = sum(m.weight.numel() for m in masked_layers(model).values()) / 8
    assert 0.2e6 < files[0].stat().st_size < 0.5 * packed
    grown = rows[-1]["rss_bytes"] - rows[0]["rss_bytes"]
    assert grown > 0  # loose: holding masks costs memory, ...
    assert grown < 3 * 10 * packed  # ... but nowhere near a model copy (90 MB) per task
