"""Tokenisation, label alignment and dynamic padding.

``encode`` turns examples into *unpadded* features (plain lists of ints); ``collate``
pads a batch to its own longest sequence. Feature keys:

- all tasks: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
  returns them) and ``labels`` (-100 where there is nothing to predict).
- sequence: ``labels`` is the label id (or -100 for an unlabelled example).
- tagging: ``labels`` has one entry per token: the tag id on the **last** wordpiece of
  each word, -100 elsewhere (special tokens, earlier pieces). ``word_index`` gives per
  token the index of the word whose last piece it is, else -1. ``n_words`` is the number
  of words in the sentence and ``n_kept`` how many of them carry a label. Words are
  lost when truncation cuts them (a word only partly kept counts as lost) or, rarely,
  when the tokenizer maps them to no piece at all (e.g. a lone zero-width space).
  Prediction code must still output ``n_words`` tags: :func:`word_predictions` fills
  lost words with a fallback tag (use the task's first label, ``"O"`` for NER).
- choice: ``input_ids`` etc. are lists with one token list per choice (each choice is
  the pair ``(context, choice)``); ``labels`` is the index of the right choice or -100.

``collate`` also returns batch metadata that must not reach the model: the keys in
:data:`META_KEYS` (``word_index``, ``n_words``, ``n_kept``, ``choice_mask``);
:func:`maskfit.tasktypes.model_inputs` picks the model's keys. Batching (length grouping,
shards per process) is :mod:`maskfit.data.loader`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskfit.data.examples import ChoiceExample, SequenceExample, TaggingExample
from maskfit.errors import DataError

IGNORE_INDEX = -100
"""Label value ignored by the loss (PyTorch ``CrossEntropyLoss`` default)."""

META_KEYS = ("word_index", "n_words", "n_kept", "choice_mask")
"""Batch keys that describe the batch but are not model inputs."""

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
"""Batch keys the model takes (:func:`maskfit.tasktypes.model_inputs` keeps those the model embeds)."""


def _label_ids(labels: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(labels)}


def _label_id(ids: dict[str, int], label: str, where: str) -> int:
    try:
        return ids[label]
    except KeyError:
        known = ", ".join(ids) if len(ids) <= 20 else ", ".join(list(ids)[:20]) + ", ..."
        raise DataError(f"{where}: unknown label {label!r} (labels: {known})") from None


def _split(enc, i: int) -> dict[str, list[int]]:
    return {k: enc[k][i] for k in MODEL_KEYS if k in enc}


def _encode_sequence(examples, tokenizer, labels, max_length):
    ids = _label_ids(labels)
    texts = [ex.text for ex in examples]
    has_pair = [ex.text_pair is not None for ex in examples]
    if any(has_pair) and not all(has_pair):
        raise DataError("mixed single-text and text-pair examples in one task")
    pairs = [ex.text_pair for ex in examples] if all(has_pair) else None
    enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
    features = []
    for i, ex in enumerate(examples):
        feature = _split(enc, i)
        feature["labels"] = IGNORE_INDEX if ex.label is None else _label_id(ids, ex.label, f"example {i}")
        features.append(feature)
    return features


def _lost_words(tokenizer, words, word_ids, max_length) -> set[int]:
    """Words whose pieces were not all kept: cut by truncation or tokenised to nothing."""
    kept = {}
    for w in word_ids:
        if w is not None:
            kept[w] = kept.get(w, 0) + 1
    lost = set(range(len(words))) - set(kept)
    if max_length and len(word_ids) >= max_length:  # truncation may have cut the last kept word
        full = tokenizer(words, is_split_into_words=True, verbose=False).word_ids()
        last = max(kept) if kept else None
        if last is not None and full.count(last) > kept[last]:
            lost.add(last)
    return lost


def _encode_tagging(examples, tokenizer, labels, max_length):
    ids = _label_ids(labels)
    enc = tokenizer([ex.words for ex in examples], is_split_into_words=True,
                    truncation=True, max_length=max_length)
    features = []
    for i, ex in enumerate(examples):
        if ex.tags is not None and len(ex.tags) != len(ex.words):
            raise DataError(f"example {i}: {len(ex.tags)} tags for {len(ex.words)} words")
        word_ids = enc.word_ids(i)
        lost = _lost_words(tokenizer, ex.words, word_ids, max_length)
        token_labels, word_index = [], []
        for j, w in enumerate(word_ids):
            is_last = w is not None and w not in lost and (j + 1 == len(word_ids) or word_ids[j + 1] != w)
            word_index.append(w if is_last else -1)
            if is_last and ex.tags is not None:
                token_labels.append(_label_id(ids, ex.tags[w], f"example {i}, word {w}"))
            else:
                token_labels.append(IGNORE_INDEX)
        feature = _split(enc, i)
        feature.update(labels=token_labels, word_index=word_index,
                       n_words=len(ex.words), n_kept=len(ex.words) - len(lost))
        features.append(feature)
    return features


def _encode_choice(examples, tokenizer, max_length):
    firsts = [ex.context for ex in examples for _ in ex.choices]
    seconds = [c for ex in examples for c in ex.choices]
    enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
    features, start = [], 0
    for i, ex in enumerate(examples):
        if not ex.choices:
            raise DataError(f"example {i}: no choices")
        if ex.label is not None and not 0 <= ex.label < len(ex.choices):
            raise DataError(f"example {i}: label {ex.label} out of range for {len(ex.choices)} choices")
        rows = range(start, start + len(ex.choices))
        start += len(ex.choices)
        feature = {k: [enc[k][r] for r in rows] for k in MODEL_KEYS if k in enc}
        feature["labels"] = IGNORE_INDEX if ex.label is None else ex.label
        features.append(feature)
    return features


def encode(task_type: str, examples: Sequence, tokenizer, labels: Sequence[str] | None,
           max_length: int) -> list[dict]:
    """Tokenise ``examples`` (of one task type) into unpadded features; see the module doc.

    ``tokenizer`` must be a fast tokenizer (``word_ids()`` is used for tagging);
    ``labels`` is the task's label list (unused for choice tasks). Truncation is
    ``longest_first`` for pairs. A label missing from ``labels`` raises ``DataError``.
    """
    if not examples:
        return []
    expected = {"sequence": SequenceExample, "tagging": TaggingExample, "choice": ChoiceExample}
    if task_type not in expected:
        raise ValueError(f"unknown task type {task_type!r} (known: {', '.join(expected)})")
    if not isinstance(examples[0], expected[task_type]):
        raise TypeError(f"{task_type} task needs {expected[task_type].__name__}, got {type(examples[0]).__name__}")
    if task_type == "choice":
        return _encode_choice(examples, tokenizer, max_length)
    if task_type == "tagging":
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("tagging needs a fast tokenizer (word_ids)")
        return _encode_tagging(examples, tokenizer, labels or (), max_length)
    return _encode_sequence(examples, tokenizer, labels or (), max_length)


def feature_length(feature: dict) -> int:
    """Number of tokens of a feature (the longest choice for choice features)."""
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


def _pad(rows: list[list[int]], length: int, value: int) -> list[list[int]]:
    return [row + [value] * (length - len(row)) for row in rows]


def collate(features: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of features to its longest sequence and stack them into tensors.

    Token ids are padded with ``pad_token_id``, masks and token types with 0, per-token
    labels with -100 and ``word_index`` with -1. Choice features give tensors shaped
    ``(batch, n_choices, seq)``; when examples have different numbers of choices the
    missing ones are all-padding rows and ``choice_mask`` (``(batch, n_choices)``, bool)
    is False there, so the caller should set those logits to ``-inf``. Metadata keys
    (:data:`META_KEYS`) are included.
    """
    if not features:
        raise ValueError("empty batch")
    choice = isinstance(features[0]["input_ids"][0], list)
    seq_len = max(feature_length(f) for f in features)
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    if choice:
        n_choices = max(len(f["input_ids"]) for f in features)
        for key, value in pad_values.items():
            if key in features[0]:
                batch[key] = torch.tensor([
                    _pad(f[key], seq_len, value) + [[value] * seq_len] * (n_choices - len(f[key]))
                    for f in features
                ])
        batch["choice_mask"] = torch.tensor(
            [[c < len(f["input_ids"]) for c in range(n_choices)] for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch
    for key, value in pad_values.items():
        if key in features[0]:
            batch[key] = torch.tensor(_pad([f[key] for f in features], seq_len, value))
    if isinstance(features[0]["labels"], list):
        batch["labels"] = torch.tensor(_pad([f["labels"] for f in features], seq_len, IGNORE_INDEX))
    else:
        batch["labels"] = torch.tensor([f["labels"] for f in features])
    if "word_index" in features[0]:
        batch["word_index"] = torch.tensor(_pad([f["word_index"] for f in features], seq_len, -1))
        batch["n_words"] = torch.tensor([f["n_words"] for f in features])
        batch["n_kept"] = torch.tensor([f["n_kept"] for f in features])
    return batch


def word_predictions(token_preds: Sequence[int], word_index: Sequence[int], n_words: int,
                     fill: int = 0) -> list[int]:
    """Per-word predictions from per-token ones, using a feature's ``word_index``.

    Words without a labelled token (lost to truncation) get ``fill`` (the id of the
    fallback tag, e.g. ``labels.index("O")``).
    """
    words = [fill] * n_words
    for pred, w in zip(token_preds, word_index):
        if w >= 0:
            words[w] = int(pred)
    return words
