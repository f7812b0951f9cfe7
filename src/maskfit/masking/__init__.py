"""The paper's method and nothing else: config, binarizer, masked layer, targets, apply."""
from .apply import (active_layers, binary_masks, initial_scores, mask_model, mask_names, mask_stats, masked_layers,
                    merged, set_active_mask, target_names, unmask_model, unwrap)
from .binarize import ThresholdBinarizer, binarize
from .config import ALL_MODULES, MaskConfig, parse_blocks
from .layer import DEFAULT, MaskedLinear, masked_into, pack_bits, unpack_bits
from .targets import ARCHITECTURES, ArchitectureMap, architecture_for

__all__ = [
    "ALL_MODULES", "ARCHITECTURES", "DEFAULT", "ArchitectureMap", "MaskConfig", "MaskedLinear", "ThresholdBinarizer",
    "active_layers", "architecture_for", "binarize", "binary_masks", "initial_scores", "mask_model", "mask_names",
    "mask_stats", "masked_into", "masked_layers", "merged", "pack_bits", "parse_blocks", "set_active_mask",
    "target_names", "unmask_model", "unpack_bits", "unwrap",
]
