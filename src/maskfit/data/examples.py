"""The three example types every reader returns.

Labels are label *names* (strings); they become ids only at encoding time, against the
task's label list. ``ChoiceExample.label`` is the index of the correct choice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SequenceExample:
    """One text (or text pair) with an optional class name."""

    text: str
    text_pair: str | None = None
    label: str | None = None


@dataclass
class TaggingExample:
    """One pre-tokenised sentence with an optional tag per word."""

    words: list[str]
    tags: list[str] | None = None


@dataclass
class ChoiceExample:
    """A context with candidate continuations; ``label`` indexes the right one."""

    context: str
    choices: list[str]
    label: int | None = None
