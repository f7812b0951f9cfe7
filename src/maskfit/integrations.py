"""Masks under an unmodified ``transformers.Trainer``: a callback that writes the task's mask files.

    model = build_model("minilm", "sequence", labels=["no", "yes"])
    mask_model(model)                                    # only the mask scores require grad
    trainer = Trainer(model=model, args=args, train_dataset=..., callbacks=[MaskfitCallback()])
    trainer.train()                                      # OUT/checkpoint-N/ and OUT/ get maskfit_config.json
    model = AutoMaskfitModel.from_pretrained("OUT")      # + <task>.masks, loadable alone

Trainer's own checkpoint (the full state dict, scores included) is what ``resume_from_checkpoint``
reads; the mask folder next to it is what a user keeps and serves (~0.5 MB for MiniLM).
See docs/trainer.md.
"""
from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import MaskfileError
from .model import MaskfitModel


def mask_folder(model) -> MaskfitModel:
    """The :class:`MaskfitModel` a Trainer or accelerate holds (through DDP / compile wrappers)."""
    seen = model
    while not isinstance(seen, MaskfitModel):
        inner = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if inner is None:
            raise MaskfileError(f"MaskfitCallback needs a MaskfitModel (maskfit.build_model), got a {type(model).__name__}")
        seen = inner
    return seen


class MaskfitCallback(TrainerCallback):
    """Writes ``save_pretrained`` of the model's tasks into every checkpoint folder and, at the end of
    training, into ``output_dir``; on the main process only.

    ``tasks`` limits what is written (default: every task the model holds; the one being trained is
    written as its scores binarised at the threshold, exactly what the forward uses).
    """

    def __init__(self, tasks: list[str] | None = None, save_at_end: bool = True):
        self.tasks = tasks
        self.save_at_end = save_at_end

    def _save(self, folder: Path, args, state, model) -> None:
        if state.is_world_process_zero:
            mask_folder(model).save_pretrained(folder, tasks=self.tasks)

    def on_save(self, args, state, control, model=None, **kwargs):
        self._save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", args, state, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.save_at_end:
            self._save(Path(args.output_dir), args, state, model)
        return control
