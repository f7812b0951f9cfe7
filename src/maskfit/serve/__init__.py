"""Serving: one base encoder in memory, many tasks as 1-bit mask files, over HTTP."""
from .app import create_app, serve
from .multitask import (STRATEGIES, InputError, InputTooLongError, MultiTaskModel, TaskLinear, UnknownTaskError,
                        format_predictions, forward_logits)

__all__ = ["STRATEGIES", "InputError", "InputTooLongError", "MultiTaskModel", "TaskLinear", "UnknownTaskError",
           "create_app", "format_predictions", "forward_logits", "serve"]
