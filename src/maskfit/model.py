"""MaskfitModel: a pretrained encoder with a task head, and the facts maskfit keeps about it."""
from __future__ import annotations

from torch import nn

from .masking import MaskConfig, mask_names, set_active_mask
from .masking.apply import masked_layers
from .tasktypes import TaskType, task_type


class MaskfitModel(nn.Module):
    """A transformers task model plus what maskfit needs to know about it.

    ``base`` is the name the pretrained encoder was loaded by (``minilm``, a folder, a hub
    id), ``task_type`` / ``labels`` / ``pooling`` describe the head, and ``mask_configs``
    holds the :class:`~maskfit.MaskConfig` of each named mask the model carries. These
    live here, on one small wrapper, instead of as attributes set on transformers
    modules. The wrapper forwards like the model it holds and looks up every attribute it
    does not have there (as peft's ``PeftModel`` does), so ``model(**batch).logits``,
    ``model.config`` and ``model.bert`` work; ``get_base_model()`` returns the
    transformers model, whose parameter names are the ones mask files use.
    """

    def __init__(self, model: nn.Module, base: str, task_type: str, labels=None, pooling: str = "cls",
                 pooler_copied: bool = False):
        super().__init__()
        self.model = model
        self.base = base
        self.task_type = task_type
        self.labels = list(labels) if labels is not None else None
        self.pooling = pooling
        self.pooler_copied = pooler_copied
        """The pre-classifier was started from the checkpoint's pooler (RoBERTa/MPNet), so a
        mask file need not store it."""
        self.mask_configs: dict[str, MaskConfig] = {}

    def get_base_model(self) -> nn.Module:
        return self.model

    @property
    def kind(self) -> TaskType:
        """The :class:`~maskfit.tasktypes.TaskType` of the head."""
        return task_type(self.task_type)

    @property
    def masks(self) -> list[str]:
        """Names of the masks the model holds."""
        return mask_names(self.model)

    @property
    def active_mask(self) -> str | None:
        active = {m.active for m in masked_layers(self.model).values()} - {None}
        return next(iter(active)) if len(active) == 1 else None

    def set_mask(self, name: str | None) -> "MaskfitModel":
        """Compute with mask ``name`` from now on (``None``: the unmasked pretrained weights)."""
        if name is not None and name not in self.masks:
            raise KeyError(f"no mask '{name}' (has: {', '.join(self.masks) or 'none'})")
        set_active_mask(self.model, name)
        return self

    @property
    def mask_config(self) -> MaskConfig:
        """The config of the active mask (the paper preset if it is unknown)."""
        return self.mask_configs.get(self.active_mask, MaskConfig())

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def extra_repr(self) -> str:
        return f"base={self.base!r}, task_type={self.task_type!r}, pooling={self.pooling!r}, masks={self.masks}"
