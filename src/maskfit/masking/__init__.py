"""The paper's method and nothing else: config, binarizer, masked layer, targets, apply."""
from .apply import (binary_masks, initial_scores, mask_model, mask_stats, masked_layers, merged,
                    target_names, unmask_model)
from .binarize import ThresholdBinarizer, binarize
from .config import ALL_MODULES, MaskConfig, parse_blocks
from .layer import MaskedLinear
from .targets import ARCHITECTURES, ArchitectureMap, architecture_for

__all__ = [
    "ALL_MODULES", "ARCHITECTURES", "ArchitectureMap", "MaskConfig", "MaskedLinear", "ThresholdBinarizer",
    "architecture_for", "binarize", "binary_masks", "initial_scores", "mask_model", "mask_stats",
    "masked_layers", "merged", "parse_blocks", "target_names", "unmask_model",
]
