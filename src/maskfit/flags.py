"""Command-line flags generated from dataclasses, so each default is stated once, on its field.

A field becomes ``--field-name`` when its ``metadata`` has ``help``; ``metadata`` may also
give ``choices``, ``type`` (a parser for the text) and ``flag`` (another flag name). A
``bool`` field true by default becomes ``--no-<name>``; a tuple is comma-separated.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing


def comma_tuple(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
                        title: str | None = None, defaults: dict | None = None) -> None:
    """One flag per documented field of ``cls``; ``defaults`` overrides a field's default for this parser."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (defaults or {}).get(f.name, default)
        kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
        kind = typing.get_origin(kinds[0]) or kinds[0]
        flag = f.metadata.get("flag", f.name).replace("_", "-")
        help_text = f.metadata["help"]
        if kind is bool:
            name = f"--no-{flag}" if default else f"--{flag}"
            group.add_argument(name, dest=f.name, action="store_false" if default else "store_true", help=help_text)
            continue
        shown = ",".join(default) if isinstance(default, tuple) else default
        if shown not in (None, "", ()) and "default:" not in help_text:
            help_text += f" (default: {shown})"
        parse = f.metadata.get("type") or (comma_tuple if kind is tuple else kind)
        group.add_argument(f"--{flag}", dest=f.name, default=default, help=help_text, type=parse,
                           choices=f.metadata.get("choices"))


def dataclass_from_flags(cls, namespace: argparse.Namespace, **overrides):
    """An instance of ``cls`` from the parsed flags that name its fields (``overrides`` win)."""
    kwargs = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    return cls(**{**kwargs, **overrides})
