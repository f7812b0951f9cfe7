"""Learn a task mask with an unmodified ``transformers.Trainer``.

    python examples/trainer_masks.py --out runs/trainer-mrpc                      # MRPC, MiniLM, 3 epochs
    python examples/trainer_masks.py --out /tmp/t --limit-train 64 --max-steps 4  # a smoke run

The only maskfit lines are ``build_model`` (the pretrained encoder + a random head),
``mask_model`` (scores on the paper's layers; everything else frozen) and the
``MaskfitCallback`` (writes ``maskfit_config.json`` + ``default.masks`` into every checkpoint
and into ``--out``). Trainer does the rest: its optimizer sees only the scores, because
nothing else requires grad. Load the result with ``AutoMaskfitModel.from_pretrained(OUT)``.
"""
from __future__ import annotations

import argparse

import numpy as np
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from maskfit import AutoMaskfitModel, MaskConfig, build_model, load_tokenizer, mask_model
from maskfit.integrations import MaskfitCallback
from maskfit.tasks import get_task


def rows(task, split, tokenizer, labels, limit=None):
    """A ``datasets.Dataset`` of tokenised sentence pairs (real rows from ../shared/data)."""
    examples = task.load(split)[:limit]
    enc = tokenizer([e.text for e in examples], [e.text_pair for e in examples], truncation=True, max_length=128)
    return Dataset.from_dict({**enc, "label": [labels.index(e.label) for e in examples],
                              "idx": list(range(len(examples)))})  # idx: a column Trainer must drop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="minilm")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-eval", type=int)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args(argv)

    task = get_task("mrpc")
    labels = list(task.labels)
    tokenizer = load_tokenizer(a.model)
    model = build_model(a.model, "sequence", labels, pooling="mean")
    mask_model(model, MaskConfig())

    args = TrainingArguments(output_dir=a.out, learning_rate=a.lr, num_train_epochs=a.epochs, max_steps=a.max_steps,
                             per_device_train_batch_size=32, per_device_eval_batch_size=64, eval_strategy="epoch",
                             save_strategy="epoch" if a.max_steps < 0 else "steps", save_steps=max(1, a.max_steps // 2),
                             report_to=[], use_cpu=True, seed=0, logging_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=rows(task, "train", tokenizer, labels, a.limit_train),
                      eval_dataset=rows(task, "dev", tokenizer, labels, a.limit_eval),
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda ev: {"accuracy": float((np.argmax(ev.predictions, -1) == ev.label_ids).mean())},
                      callbacks=[MaskfitCallback()])
    trainer.train()
    result = trainer.evaluate()
    reloaded = AutoMaskfitModel.from_pretrained(a.out)
    print(f"dev accuracy {result['eval_accuracy']:.4f}; {a.out} holds task {reloaded.tasks} "
          f"({reloaded.mask_config.init_sparsity:g} initial sparsity)")
    return result


if __name__ == "__main__":
    main()
