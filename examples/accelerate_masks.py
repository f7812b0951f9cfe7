"""Learn a task mask in a plain ``accelerate`` loop (any device, any number of processes).

    python examples/accelerate_masks.py --out runs/acc-mrpc
    accelerate launch --num_processes 2 examples/accelerate_masks.py --out runs/acc-mrpc
    python examples/accelerate_masks.py --out /tmp/a --limit-train 64 --limit-eval 32 --epochs 1   # smoke run

As in accelerate's ``examples/nlp_example.py``: ``prepare`` the model, the optimizer (over the
parameters that require grad: only the mask scores) and the loaders; ``gather_for_metrics``
for dev accuracy; the main process writes ``save_pretrained`` of the unwrapped model.
"""
from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from maskfit import AutoMaskfitModel, build_model, load_tokenizer, mask_model
from maskfit.tasks import get_task


def features(task, split, tokenizer, labels, limit=None):
    examples = task.load(split)[:limit]
    enc = tokenizer([e.text for e in examples], [e.text_pair for e in examples], truncation=True, max_length=128)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": labels.index(e.label)} for i, e in enumerate(examples)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="minilm")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-eval", type=int)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args(argv)

    accelerator = Accelerator()
    task = get_task("mrpc")
    labels = list(task.labels)
    tokenizer = load_tokenizer(a.model)
    collate = DataCollatorWithPadding(tokenizer)
    torch.manual_seed(0)
    train = DataLoader(features(task, "train", tokenizer, labels, a.limit_train), batch_size=32, shuffle=True,
                       collate_fn=collate)
    dev = DataLoader(features(task, "dev", tokenizer, labels, a.limit_eval), batch_size=64, collate_fn=collate)
    model = mask_model(build_model(a.model, "sequence", labels, pooling="mean"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=a.lr)
    model, optimizer, train, dev = accelerator.prepare(model, optimizer, train, dev)

    for epoch in range(a.epochs):
        model.train()
        for batch in train:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        right = total = 0
        for batch in dev:
            with torch.no_grad():
                pred = model(**batch).logits.argmax(-1)
            pred, gold = accelerator.gather_for_metrics((pred, batch["labels"]))
            right, total = right + int((pred == gold).sum()), total + len(gold)
        accelerator.print(f"epoch {epoch}: dev accuracy {right / total:.4f}")
        accelerator.unwrap_model(model).save_pretrained(a.out, is_main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"{a.out} holds task {AutoMaskfitModel.from_pretrained(a.out).tasks}")
    return right / total


if __name__ == "__main__":
    main()
