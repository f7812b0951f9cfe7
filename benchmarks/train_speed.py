"""Training throughput: ``maskfit train --method mask`` against ``transformers.Trainer``.

Both train the same model on the same examples (same task, batch size, epochs, max
length, thread count) in one process, one after the other. Trainer runs at its default
settings (finetuning every weight, AdamW, fp32 on CPU, dynamic padding through
``DataCollatorWithPadding``); maskfit runs its defaults (masking, length-bucketed dynamic
padding, frozen embeddings and lower blocks, bf16 only where the CPU has it natively).

    python benchmarks/train_speed.py --task sst2 --model minilm --limit-train 2000 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def trainer_rate(task, model_name: str, train, batch_size: int, epochs: int, max_length: int, seed: int,
                 device: str = "cpu", precision: str = "fp32") -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from maskfit.data.encode import encode
    from maskfit.heads import build_model, load_tokenizer

    tok = load_tokenizer(model_name)
    labels = list(task.labels)
    feats = encode(task.type, train, tok, labels, max_length)
    dataset = [{k: v for k, v in f.items() if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
               for f in feats]
    model = build_model(model_name, task.type, labels, seed=seed).get_base_model()  # the plain transformers model
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                                 report_to=[], save_strategy="no", logging_strategy="no", use_cpu=device == "cpu",
                                 bf16=precision == "bf16", fp16=precision == "fp16", seed=seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        out = trainer.train()
        wall = time.perf_counter() - t0
    return {"examples_per_s": len(dataset) * epochs / wall, "wall_s": wall,
            "trainer_reported_samples_per_s": out.metrics.get("train_samples_per_second")}


def maskfit_rate(task, model_name: str, batch_size: int, epochs: int, max_length: int, seed: int,
                 limit_train: int, precision: str, device: str = "auto") -> dict:
    from maskfit.train import TrainArgs, fit

    args = TrainArgs(method="mask", lr=1e-3, epochs=epochs, patience=0, batch_size=batch_size, max_length=max_length,
                     seed=seed, limit_train=limit_train, limit_eval=64, precision=precision, device=device)
    res = fit(task, model_name, None, args, progress=False)
    train_s = sum(r["train_time_s"] for r in res.metrics["epochs"])
    return {"examples_per_s": res.metrics["train_examples_per_s"], "wall_s": train_s,
            "precision": res.metrics["precision"], "device": res.metrics["engine"]["device"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--limit-train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (both trainers use it)")
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    a = ap.parse_args()
    os.chdir(ROOT)

    from maskfit.runtime import cpu_has_native_bf16, cpu_model, resolve_device, resolve_precision
    from maskfit.tasks import get_task
    from maskfit.train import TrainArgs, split_data

    task = get_task(a.task)
    train, *_ = split_data(task, TrainArgs(seed=a.seed, limit_train=a.limit_train))
    device = resolve_device(a.device)
    precision = resolve_precision(a.precision, device)  # Trainer gets the same autocast precision
    mf = maskfit_rate(task, a.model, a.batch_size, a.epochs, a.max_length, a.seed, a.limit_train, a.precision,
                      str(device))
    hf = trainer_rate(task, a.model, train, a.batch_size, a.epochs, a.max_length, a.seed, device.type, precision)
    result = {
        "command": "python benchmarks/train_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "task": a.task, "model": a.model, "n_train": len(train), "epochs": a.epochs, "batch_size": a.batch_size,
        "maskfit_mask": mf, "trainer_finetune": hf, "speedup": mf["examples_per_s"] / hf["examples_per_s"],
        "threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16(), "cpu": cpu_model(),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_avg_at_end": os.getloadavg(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
