"""The method's knobs, as one documented dataclass."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

ALL_MODULES = ("q", "k", "v", "ao", "i", "o")


@dataclass
class MaskConfig:
    """How to mask a pretrained encoder (Zhao et al., 2020, Section 3).

    Every field has the paper's default; ``MaskConfig()`` is the paper preset.
    """

    init_sparsity: float = field(default=0.05, metadata={"help": "fraction of each masked matrix that starts at zero"})
    """Fraction of each masked weight matrix that starts at zero (paper: 5%). The
    scores are drawn so that *exactly* ``round(init_sparsity * n)`` of a layer's
    ``n`` scores start below the threshold."""

    threshold: float = field(default=5e-3, metadata={"help": "τ: a weight is kept when its score is >= τ"})
    """The global threshold τ: a weight is kept when its score M ≥ τ. Its absolute value
    does not matter on its own; what matters is ``init_scale`` relative to the learning
    rate, because Adam moves every score by roughly ``lr`` per step whatever the gradient
    scale. 5e-3 follows piggyback/the paper's code; keeping τ > 0 makes the zero-initialised
    scores of a fresh tensor mean "pruned", which is the safe reading."""

    init_scale: float = field(default=2e-2, metadata={"help": "width of the initial score range"})
    """Width of the uniform range the scores are drawn from: U[τ - p·s, τ + (1 - p)·s)
    with p = ``init_sparsity`` and s = ``init_scale``. With lr 1e-4 a score at the middle
    of the range needs ~100 Adam steps to cross τ, so masks change within an epoch but
    not on the first noisy batches."""

    blocks: str | list[int] | None = field(default=None, metadata={
        "help": "blocks to mask: '2-11', '0,3,5-7' or 'all' (default: all but the two lowest)"})
    """Transformer blocks to mask: ``"2-11"``, ``"0,3,5-7"``, ``"all"``, a list of
    indices, or ``None`` for the paper preset (all but the two lowest blocks: 2–11 of
    a 12-block model, 2–5 of a 6-block one)."""

    modules: tuple[str, ...] = field(default=ALL_MODULES, metadata={
        "help": "linears to mask in each block, comma-separated from q,k,v,ao,i,o"})
    """Linears to mask inside each selected block, a subset of ``q, k, v, ao, i, o``
    (the paper's W_Q, W_K, W_V, W_AO, W_I, W_O)."""

    mask_pooler: bool = field(default=True, metadata={"help": "leave the pooler / pre-classifier unmasked (frozen)"})
    """Mask the pooler / pre-classifier (paper's W_P) when the model has one."""

    mask_classifier: bool = field(default=True, metadata={"help": "leave the random classifier unmasked (frozen)"})
    """Mask the randomly initialised classifier (paper's W_T). It is never trained."""

    classifier_scale: float = field(default=1.0, metadata={
        "help": "multiply the random classifier W_T by this before masking (it is never trained: its scale is "
                "the softmax temperature the masks work under)"})
    """W_T is drawn at random (std ``initializer_range``, 0.02 for BERT) and only masked, never
    trained, so its scale fixes the temperature of the output: pruning can select terms but
    not make them larger. At 0.02 the untrained masked MiniLM's logit difference varies by
    0.02 across RTE or MRPC examples (every p ≈ 0.50), so the loss barely moves and the score
    gradients are small and noisy. This multiplies the drawn W_T (same seeded direction) when
    trainable masks are created; a loaded mask file carries its head as trained."""

    seed: int = 0
    """Seeds the initial scores (per layer, from the seed and the layer's name), so two
    tasks trained with the same seed share their initial mask."""

    targets: str | None = field(default=None, metadata={
        "help": "a regular expression over module names: mask every nn.Linear it matches (replaces the above)"})
    """A regular expression (``re.search``) over full module names. When set, it
    replaces ``blocks``/``modules``/``mask_pooler``/``mask_classifier``: every
    ``nn.Linear`` whose name matches is masked. This is the escape hatch for
    architectures without a map; include the classifier in it."""

    def __post_init__(self) -> None:
        import math

        for name in ("init_sparsity", "threshold", "init_scale", "classifier_scale"):
            if not isinstance(getattr(self, name), (int, float)) or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not self.classifier_scale > 0:
            raise ValueError(f"classifier_scale must be > 0, got {self.classifier_scale}")
        if not 0.0 <= self.init_sparsity <= 1.0:
            raise ValueError(f"init_sparsity must be in [0, 1], got {self.init_sparsity}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        if isinstance(self.modules, str):
            self.modules = tuple(m.strip() for m in self.modules.split(",") if m.strip())
        self.modules = tuple(self.modules)
        unknown = sorted(set(self.modules) - set(ALL_MODULES))
        if unknown:
            raise ValueError(f"unknown module(s) {unknown}; choose from {', '.join(ALL_MODULES)}")
        if len(set(self.modules)) != len(self.modules):
            raise ValueError(f"modules lists a module twice: {','.join(self.modules)}")
        if self.targets is not None:
            try:
                re.compile(self.targets)
            except re.error as e:
                raise ValueError(f"targets is not a valid regular expression: {e}") from None
        if isinstance(self.blocks, str) and self.blocks not in ("all", "preset"):
            parse_blocks(self.blocks, None)  # validate syntax early

    def block_indices(self, num_blocks: int) -> list[int]:
        """The selected block indices for a model with ``num_blocks`` blocks."""
        if self.blocks is None or self.blocks == "preset":
            return list(range(min(2, num_blocks), num_blocks))
        if self.blocks == "all":
            return list(range(num_blocks))
        return parse_blocks(self.blocks, num_blocks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modules"] = list(self.modules)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MaskConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "modules" else v) for k, v in d.items() if k in known})


def parse_blocks(spec: str | list[int], num_blocks: int | None) -> list[int]:
    """Parse ``"2-11"``, ``"0,3,5-7"`` or a list of ints into sorted unique indices."""
    if isinstance(spec, (list, tuple)):
        idx = [int(i) for i in spec]
    else:
        idx = []
        for part in str(spec).split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ValueError(f"bad block spec {spec!r}: use e.g. '2-11', '0,3,5-7' or 'all'")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise ValueError(f"bad block range {part!r} in {spec!r}")
            idx.extend(range(lo, hi + 1))
    idx = sorted(set(idx))
    if num_blocks is not None and idx and (idx[0] < 0 or idx[-1] >= num_blocks):
        raise ValueError(f"blocks {spec!r} out of range for a model with {num_blocks} blocks (0-{num_blocks - 1})")
    return idx
