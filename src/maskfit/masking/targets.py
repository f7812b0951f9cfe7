"""Which linears the method masks, per architecture: data, not branches.

Names are relative to ``model.base_model`` for the encoder (``blocks``, ``modules``,
``pooler``) and relative to the task model for the head (``pre_classifier``,
``classifier``). Candidates that a given head class lacks are skipped: e.g.
``BertForTokenClassification`` has no pooler, ``RobertaForSequenceClassification``
uses ``classifier.dense`` as its pre-classifier instead of ``roberta.pooler``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureMap:
    blocks: str
    """Path of the ``nn.ModuleList`` of transformer blocks, relative to the base model."""
    encoder: str
    """Path of the module whose output is the last hidden states, before any pooler."""
    modules: dict[str, str]
    """Paper name (q, k, v, ao, i, o) → path inside one block."""
    pooler: tuple[str, ...]
    """Paper's W_P: pooler linears relative to the base model (masked when present)."""
    pre_classifier: tuple[str, ...]
    """Also W_P: head-level dense layers some heads put before the classifier."""
    classifier: tuple[str, ...]
    """Paper's W_T: the output projection of each head class (first one present wins)."""


_BERT_LIKE_MODULES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "i": "intermediate.dense",
    "o": "output.dense",
}

ARCHITECTURES: dict[str, ArchitectureMap] = {
    "bert": ArchitectureMap(
        blocks="encoder.layer",
        encoder="encoder",
        modules=_BERT_LIKE_MODULES,
        pooler=("pooler.dense",),
        pre_classifier=(),
        classifier=("classifier",),
    ),
    "roberta": ArchitectureMap(
        blocks="encoder.layer",
        encoder="encoder",
        modules=_BERT_LIKE_MODULES,
        pooler=("pooler.dense",),
        pre_classifier=("classifier.dense",),
        classifier=("classifier.out_proj", "classifier"),
    ),
    "distilbert": ArchitectureMap(
        blocks="transformer.layer",
        encoder="transformer",
        modules={"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                 "ao": "attention.out_lin", "i": "ffn.lin1", "o": "ffn.lin2"},
        pooler=(),
        pre_classifier=("pre_classifier",),
        classifier=("classifier",),
    ),
    "mpnet": ArchitectureMap(
        blocks="encoder.layer",
        encoder="encoder",
        modules={"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
                 "ao": "attention.attn.o", "i": "intermediate.dense", "o": "output.dense"},
        pooler=("pooler.dense",),
        pre_classifier=("classifier.dense",),
        classifier=("classifier.out_proj", "classifier"),
    ),
}
# Same module layout under another model_type.
ARCHITECTURES["xlm-roberta"] = ARCHITECTURES["roberta"]
ARCHITECTURES["camembert"] = ARCHITECTURES["roberta"]


def architecture_for(model_type: str) -> ArchitectureMap:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        from ..errors import ModelError

        raise ModelError(
            f"no mask map for architecture '{model_type}'; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Pass MaskConfig(targets=REGEX) to mask any nn.Linear by name."
        ) from None
