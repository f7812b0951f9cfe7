"""Data: example types, one reader per file format, tokenisation and collation."""

from maskfit.data.encode import (
    IGNORE_INDEX,
    META_KEYS,
    MODEL_KEYS,
    collate,
    encode,
    feature_length,
    word_predictions,
)
from maskfit.data.loader import batches, plan
from maskfit.data.examples import ChoiceExample, SequenceExample, TaggingExample
from maskfit.data.readers import (
    AGNEWS_LABELS,
    read_agnews,
    read_arc,
    read_cola,
    read_conll2003,
    read_conllu,
    read_imdb,
    read_mrpc,
    read_qnli,
    read_rte,
    read_sst2,
    read_swag,
    read_table,
)

__all__ = [
    "AGNEWS_LABELS", "batches", "plan", "IGNORE_INDEX", "META_KEYS", "MODEL_KEYS", "ChoiceExample", "SequenceExample", "TaggingExample",
    "collate", "encode", "feature_length", "read_agnews", "read_arc", "read_cola",
    "read_conll2003", "read_conllu", "read_imdb", "read_mrpc", "read_qnli", "read_rte", "read_sst2",
    "read_swag", "read_table", "word_predictions",
]
