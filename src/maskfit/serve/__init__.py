"""Serving: one base encoder in memory, many tasks as 1-bit mask files, over HTTP."""
from .app import create_app, serve
from .multitask import STRATEGIES, InputError, InputTooLongError, MultiTaskModel, UnknownTaskError

__all__ = ["STRATEGIES", "InputError", "InputTooLongError", "MultiTaskModel", "UnknownTaskError", "create_app",
           "serve"]
