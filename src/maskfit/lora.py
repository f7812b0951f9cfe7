"""LoRA through peft: the baseline users pick today for cheap multi-task adaptation.

``--method lora`` puts low-rank adapters (Hu et al., 2021) on the attention linears named
by ``--lora-targets`` (the paper's names ``q,k,v,ao,i,o``, mapped through the same
architecture maps masking uses; default ``q,v`` in every block), trains them and the task
head (the classifier, and the pre-classifier where the head has one, through peft's
``modules_to_save``), and freezes everything else. The adapter is stored as one
safetensors file (``lora.safetensors``: peft's adapter state dict, the ``LoraConfig`` in
the metadata), written atomically like every other file, and next to the mask file it is
the number to compare: bytes per task.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from torch import nn

from .errors import RunError
from .masking.apply import unwrap
from .masking.targets import architecture_for

LORA_FILE = "lora.safetensors"
# peft calls a transformers property that transformers 5 deprecates; not ours to fix, not the user's concern
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def lora_config(model: nn.Module, r: int = 8, alpha: float = 16.0, targets=("q", "v"), dropout: float = 0.1):
    """The peft ``LoraConfig`` for ``model``: adapters on ``targets`` in every block, the head trained."""
    from peft import LoraConfig

    inner = unwrap(model)
    arch = architecture_for(inner.config.model_type)
    leaves = sorted({arch.modules[t].rsplit(".", 1)[-1] for t in targets})
    head = []
    for name in (*arch.pre_classifier, *arch.classifier):
        top = name.split(".")[0]
        try:
            inner.get_submodule(name)
        except AttributeError:
            continue
        if top not in head:
            head.append(top)
    # target_modules by leaf name, restricted to the blocks (the classifier has its own copy)
    pattern = rf".*{arch.blocks.replace('.', '[.]')}[.]\d+[.].*({'|'.join(leaves)})$"
    return LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=pattern,
                      modules_to_save=head, bias="none")


def add_lora(model: nn.Module, config) -> nn.Module:
    """Wrap the transformers model inside ``model`` (a MaskfitModel) with LoRA adapters; only they and the head train."""
    from peft import get_peft_model

    model.model = get_peft_model(model.model, config)
    return model


def save_lora(model: nn.Module, path: str | os.PathLike) -> Path:
    """The adapter (and trained head) of ``model`` as one safetensors file, written atomically."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .run import atomic_write

    from .maskfile import fingerprint

    peft_model = model.model
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
    cfg = peft_model.peft_config["default"].to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    meta = {"maskfit.lora": json.dumps(cfg, default=str),
            "maskfit.base": json.dumps({"base_model": model.base, "fingerprint": fingerprint(model)})}
    return atomic_write(path, writer=lambda tmp: save_file(state, tmp, metadata=meta))


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Put the adapter file at ``path`` onto ``model`` (a freshly built MaskfitModel of the same base and head).

    Like a mask file, the adapter names its base and is refused on any other (fingerprint).
    """
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .maskfile import check_base

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            cfg, base = json.loads(meta["maskfit.lora"]), json.loads(meta["maskfit.base"])
        state = load_file(str(path))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"{path} is not a readable maskfit LoRA adapter ({type(e).__name__})") from None
    check_base(model, base, path)
    known = set(LoraConfig.__dataclass_fields__)
    add_lora(model, LoraConfig(**{k: v for k, v in cfg.items() if k in known}))
    result = set_peft_model_state_dict(model.model, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) or []]
    if missing:
        raise RunError(f"{path}: tensors that do not fit this model: {missing[:3]}")
    return model

