"""Mask-file size under the paper preset, as a share of the fp32 model.

    python benchmarks/mask_size.py --models minilm mpnet
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from maskfit import MaskConfig, build_model, mask_model, mask_stats, save_masks
from maskfit.heads import random_head_parameters


def measure(model_name: str, n_labels: int = 2) -> dict:
    model = build_model(model_name, "sequence", [str(i) for i in range(n_labels)])
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    mask_model(model, MaskConfig())
    stats = mask_stats(model)
    head = sum(p.numel() * p.element_size() for p in random_head_parameters(model).values())
    with tempfile.TemporaryDirectory() as tmp:
        size = save_masks(model, Path(tmp) / "task.masks").stat().st_size
    return {"model": model_name, "params": fp32_bytes // 4, "fp32_bytes": fp32_bytes,
            "masked_layers": len(stats["layers"]), "masked_weights": stats["total"],
            "packed_mask_bytes": sum(math.ceil(l["total"] / 8) for l in stats["layers"].values()),
            "head_bytes": head, "file_bytes": size, "percent_of_fp32": 100 * size / fp32_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["minilm", "mpnet"])
    ap.add_argument("--out", default="benchmarks/results/mask_size.json")
    a = ap.parse_args()
    rows = [measure(m) for m in a.models]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['model']}: {r['file_bytes']:,} B mask file for {r['masked_weights']:,} masked weights in "
              f"{r['masked_layers']} layers = {r['percent_of_fp32']:.2f}% of the fp32 model ({r['fp32_bytes']:,} B)")


if __name__ == "__main__":
    main()
