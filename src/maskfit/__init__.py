"""maskfit: adapt frozen pretrained encoders by learning 1-bit masks over their weights.

    from maskfit import MaskConfig, build_model, mask_model, save_masks, load_task_model
    model = build_model("minilm", "sequence", labels=["neg", "pos"])   # a MaskfitModel
    mask_model(model, MaskConfig(init_sparsity=0.05))   # only mask scores train
    ...                                                   # train (maskfit.train.fit)
    save_masks(model, "sst2.masks")                       # ~0.5 MB for MiniLM
    model = AutoMaskfitModel.from_pretrained("sst2.masks")  # peft-shaped: add_task, set_task, save_pretrained

``maskfit.integrations.MaskfitCallback`` writes the masks from an unmodified ``transformers.Trainer``.
"""
from .errors import ConfigError, DataError, MaskfileError, MaskfitError, ModelError, RunError
from .heads import build_model, load_tokenizer
from .maskfile import fingerprint, load_masks, load_task_model, read_maskfile, save_masks
from .masking import MaskConfig, MaskedLinear, binary_masks, mask_model, mask_stats, masked_layers, merged
from .model import AutoMaskfitModel, MaskfitModel
from .models import resolve_model

__version__ = "0.2.0"

__all__ = [
    "AutoMaskfitModel", "ConfigError", "DataError", "MaskConfig", "MaskedLinear", "MaskfileError", "MaskfitError", "MaskfitModel",
    "ModelError", "RunError", "binary_masks", "build_model", "fingerprint", "load_masks", "load_task_model",
    "load_tokenizer", "mask_model", "mask_stats", "masked_layers", "merged", "read_maskfile", "resolve_model",
    "save_masks",
]
