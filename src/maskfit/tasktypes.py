"""The three task types, each as one object that owns everything type-specific.

A :class:`TaskType` knows how to turn inputs into examples, examples into features,
a batch into logits and a loss, logits into per-example *outputs*, outputs into
predictions and a score, and an output into the JSON answer of ``maskfit predict`` and
the server. Everything else in maskfit is written once, against this interface; a
branch on the task type anywhere else is a sign that something belongs here.

An *output* is one example's logits as a float32 numpy array, the unit that evaluation,
ensembles, ``predict`` and serving share:

* sequence: ``(n_labels,)``;
* choice: ``(n_choices,)``, this example's choices only;
* tagging: ``(n_words, n_labels)``, the logits at each word's last wordpiece; a word lost
  to truncation gets a one-hot row at the fallback tag (``"O"``, else the first label).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, AutoModelForTokenClassification

from .data.encode import IGNORE_INDEX, MODEL_KEYS, encode as encode_features
from .data.examples import ChoiceExample, SequenceExample, TaggingExample
from .errors import DataError
from .masking.apply import unwrap
from .metrics import compute_metric


class InputError(DataError):
    """An input of the wrong kind for the task's type (or an empty one)."""


def model_inputs(model, batch: dict) -> dict:
    """The keyword arguments ``model`` takes from a collated batch: no labels or metadata,
    and token types only for models that embed them."""
    cfg = unwrap(model).config
    uses_types = getattr(cfg, "type_vocab_size", 0) > 1 or cfg.model_type == "bert"
    return {k: v for k, v in batch.items()
            if k in MODEL_KEYS and (k != "token_type_ids" or uses_types)}


def softmax(row: np.ndarray) -> list[float]:
    """Probabilities of one output row, computed as torch does in float32."""
    return torch.from_numpy(np.ascontiguousarray(row)).softmax(-1).tolist()


class TaskType:
    """What differs between sequence, tagging and choice tasks (see the module doc)."""

    name: ClassVar[str]
    auto_model: ClassVar[type]
    """The transformers auto class of the head."""
    example: ClassVar[type]
    """The example dataclass its readers return."""
    poolings: ClassVar[tuple[str, ...]] = ("cls", "mean")
    """What the head may read: the first token (cls) or the masked mean of all tokens."""

    def __repr__(self) -> str:
        return f"TaskType({self.name!r})"

    # -------------------------------------------------------------- inputs and features

    def encode(self, examples: Sequence, tokenizer, labels, max_length: int) -> list[dict]:
        """Unpadded features (see :mod:`maskfit.data.encode`)."""
        return encode_features(self.name, examples, tokenizer, labels, max_length)

    def parse(self, inputs, text_kind: str | None = None) -> list:
        """Request or ``predict`` inputs → examples; :class:`InputError` names the bad input.

        ``text_kind`` is what a sequence task was trained on (``"single"`` texts or ``"pair"`` s,
        recorded at training time; None: unknown, both accepted); other types ignore it.
        """
        if isinstance(inputs, (str, bytes, dict)) or not hasattr(inputs, "__len__"):
            raise InputError("inputs must be a list")
        if len(inputs) == 0:
            raise InputError("inputs is empty")
        return [self.parse_one(x, i) for i, x in enumerate(inputs)]

    def parse_one(self, x, i: int):  # pragma: no cover - every type overrides it
        raise NotImplementedError

    def items(self, feature: dict) -> int:
        """How many terms ``feature`` adds to the loss (its labelled positions)."""
        return int(feature["labels"] != IGNORE_INDEX)

    # -------------------------------------------------------------- model side

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Float32 logits of a collated batch: (B, C) sequence, (B, T, C) tagging, (B, choices) choice."""
        return model(**model_inputs(model, batch)).logits.float()

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the labelled positions (callers divide by the item count)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")

    def outputs(self, logits: torch.Tensor, batch: dict, labels) -> list[np.ndarray]:
        """One output per example of the batch (see the module doc)."""
        return list(logits.detach().cpu().numpy())

    # -------------------------------------------------------------- outputs

    def predictions(self, outputs: Sequence[np.ndarray], labels) -> list:
        """Predicted label names (sequence), tag lists (tagging) or choice indices (choice)."""
        return [labels[int(np.argmax(o))] for o in outputs]

    def golds(self, examples: Sequence) -> list:
        return [ex.label for ex in examples]

    def score(self, metric: str, outputs: Sequence[np.ndarray], examples: Sequence, labels) -> tuple[float, list]:
        """(metric value, predictions) of ``outputs`` against the examples' gold labels."""
        preds = self.predictions(outputs, labels)
        return compute_metric(metric, preds, self.golds(examples)), preds

    def gold_ids(self, example, labels) -> list[int]:
        """The example's gold class index per item (one for sequence and choice, one per word for tagging)."""
        return [list(labels).index(example.label)]

    def mean_loss(self, outputs: Sequence[np.ndarray], examples: Sequence, labels) -> float:
        """Mean cross-entropy of ``outputs`` against the gold labels, over every item."""
        total, n = 0.0, 0
        for o, ex in zip(outputs, examples):
            rows = np.atleast_2d(o).astype(np.float64)
            m = rows.max(axis=-1, keepdims=True)
            logz = (m + np.log(np.exp(rows - m).sum(axis=-1, keepdims=True)))[:, 0]
            gold = self.gold_ids(ex, labels)
            total += float(np.sum(logz - rows[np.arange(len(gold)), gold]))
            n += len(gold)
        return total / max(n, 1)

    def answer(self, output: np.ndarray, labels, example) -> dict:
        """The JSON answer for one example (``maskfit predict`` and the server)."""
        return {"label": labels[int(np.argmax(output))], "probabilities": dict(zip(labels, softmax(output)))}


class SequenceType(TaskType):
    name = "sequence"
    auto_model = AutoModelForSequenceClassification
    example = SequenceExample

    def parse_one(self, x, i):
        if isinstance(x, str):
            return SequenceExample(x)
        if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(s, str) for s in x):
            return SequenceExample(x[0], x[1])
        if isinstance(x, dict) and isinstance(x.get("text"), str) and isinstance(x.get("text_pair"), (str, type(None))):
            return SequenceExample(x["text"], x.get("text_pair"))
        raise InputError(f"input {i}: a sequence task takes a string or a [text, text_pair] pair")

    def parse(self, inputs, text_kind=None):
        out = super().parse(inputs)
        if len({ex.text_pair is not None for ex in out}) > 1:
            raise InputError("mix of single texts and [text, text_pair] pairs in one call: send them separately")
        if text_kind in ("single", "pair") and (out[0].text_pair is not None) != (text_kind == "pair"):
            raise InputError("this task was trained on sentence pairs: send each input as [text, text_pair]"
                             if text_kind == "pair" else
                             "this task was trained on single texts: send each input as one string, not a pair")
        return out


class TaggingType(TaskType):
    name = "tagging"
    auto_model = AutoModelForTokenClassification
    example = TaggingExample
    poolings = ("cls",)

    @staticmethod
    def fill(labels) -> int:
        """The tag a word lost to truncation gets: ``"O"``, else the first label."""
        return list(labels).index("O") if "O" in labels else 0

    def parse_one(self, x, i):
        if isinstance(x, dict) and "words" in x:
            x = x["words"]
        if isinstance(x, str):
            words = x.split()
        elif isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x):
            words = list(x)
        else:
            raise InputError(f"input {i}: a tagging task takes a list of words or a string")
        if not words or any(not w.strip() for w in words):
            raise InputError(f"input {i}: a tagging input needs at least one word, and no empty words")
        return TaggingExample(words)

    def items(self, feature):
        return sum(1 for t in feature["labels"] if t != IGNORE_INDEX)

    def outputs(self, logits, batch, labels):
        logits = logits.detach().cpu().numpy()
        fill = self.fill(labels)
        word_index, n_words = batch["word_index"].cpu().numpy(), batch["n_words"].tolist()
        out = []
        for j, n in enumerate(n_words):
            rows = np.zeros((n, logits.shape[-1]), dtype=np.float32)
            rows[:, fill] = 1.0
            pos = np.flatnonzero(word_index[j] >= 0)
            rows[word_index[j][pos]] = logits[j, pos]
            out.append(rows)
        return out

    def predictions(self, outputs, labels):
        return [[labels[int(k)] for k in o.argmax(-1)] for o in outputs]

    def golds(self, examples):
        return [ex.tags for ex in examples]

    def gold_ids(self, example, labels):
        index = {t: i for i, t in enumerate(labels)}
        return [index[t] for t in example.tags]

    def answer(self, output, labels, example):
        return {"words": list(example.words), "tags": [labels[int(k)] for k in output.argmax(-1)]}


class ChoiceType(TaskType):
    name = "choice"
    auto_model = AutoModelForMultipleChoice
    example = ChoiceExample

    def parse_one(self, x, i):
        ok = (isinstance(x, dict) and isinstance(x.get("context", ""), str) and isinstance(x.get("choices"), (list, tuple))
              and len(x["choices"]) > 0 and all(isinstance(c, str) for c in x["choices"]))
        if not ok:
            raise InputError(f'input {i}: a choice task takes {{"context": str, "choices": [str, ...]}}')
        return ChoiceExample(x.get("context", ""), list(x["choices"]))

    def logits(self, model, batch):
        logits = super().logits(model, batch)
        if "choice_mask" in batch:  # examples with fewer choices: their padding rows never win
            logits = logits.masked_fill(~batch["choice_mask"], float("-inf"))
        return logits

    def outputs(self, logits, batch, labels):
        logits = logits.detach().cpu().numpy()
        counts = batch["choice_mask"].sum(-1).tolist() if "choice_mask" in batch else [logits.shape[-1]] * len(logits)
        return [logits[j, :n] for j, n in enumerate(counts)]

    def predictions(self, outputs, labels):
        return [int(np.argmax(o)) for o in outputs]

    def gold_ids(self, example, labels):
        return [int(example.label)]

    def answer(self, output, labels, example):
        return {"choice": int(np.argmax(output)), "probabilities": softmax(output)}


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (SequenceType(), TaggingType(), ChoiceType())}


def task_type(name: str | TaskType) -> TaskType:
    """The :class:`TaskType` called ``name`` (``sequence``, ``tagging`` or ``choice``)."""
    if isinstance(name, TaskType):
        return name
    try:
        return TASK_TYPES[name]
    except (KeyError, TypeError):
        from .errors import ModelError

        raise ModelError(f"unknown task type {name!r}; expected one of {', '.join(TASK_TYPES)}") from None
