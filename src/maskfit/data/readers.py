"""Readers: one function per file format, each returning a list of examples.

Every reader raises :class:`maskfit.errors.DataError` on malformed input, with a one-line
message ``<file>:<line>: <what is wrong>`` (1-based line numbers), and on a file with no
rows. GLUE ``.tsv`` files are read with quoting turned off (``csv.QUOTE_NONE``): their
texts contain unbalanced double quotes (e.g. MRPC). Generic user csv/tsv files are read
with the csv module's default quoting, as written by pandas or spreadsheets.
"""

from __future__ import annotations

import csv
import gzip
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

from maskfit.data.examples import ChoiceExample, SequenceExample, TaggingExample
from maskfit.errors import DataError

AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
"""AG News class names, in the order of the official class indices 1-4."""


# --------------------------------------------------------------------------- helpers


def _open(path: Path):
    """Open a text file (``.gz`` transparently); a leading UTF-8 BOM is dropped."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _format(path: Path) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the file name (``.gz`` ignored)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in ("csv", "tsv", "jsonl"):
        raise DataError(f"{path}: cannot tell the format from the name (want .csv, .tsv or .jsonl)")
    return fmt


def iter_records(
    path: Path,
    fmt: str | None = None,
    *,
    fieldnames: tuple[str, ...] | None = None,
    required: tuple[str, ...] = (),
    quoting: int = csv.QUOTE_MINIMAL,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, row)`` from a csv/tsv (header row unless ``fieldnames``) or jsonl file.

    Checks the column count of every delimited row and that ``required`` columns exist
    (for delimited files in the header, for jsonl in every object). Blank lines are skipped.
    """
    path = Path(path)
    fmt = fmt or _format(path)
    with _open(path) as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                for col in required:
                    if col not in row:
                        raise DataError(f"{path}:{lineno}: missing column {col!r}")
                yield lineno, row
            return
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
        try:
            if fieldnames is None:
                header = next((r for r in reader if r), None)
                if header is None:
                    raise DataError(f"{path}: empty file")
                header = [h.strip() for h in header]
                for col in required:
                    if col not in header:
                        raise DataError(
                            f"{path}:{reader.line_num}: missing column {col!r} (columns: {', '.join(header)})"
                        )
            else:
                header = list(fieldnames)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: expected {len(header)} columns, got {len(row)}"
                    )
                yield reader.line_num, dict(zip(header, row))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from None


def _value(path: Path, lineno: int, row: dict, column: str) -> str:
    """The non-empty string value of ``column`` (numbers from JSON are turned into strings)."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{lineno}: empty value in column {column!r}")
    return value if isinstance(value, str) else str(value)


def _nonempty(path: Path, examples: list) -> list:
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


# ------------------------------------------------------------------- generic tables


def read_table(
    path: str | Path,
    text_column: str,
    label_column: str | None = None,
    text_pair_column: str | None = None,
    *,
    fmt: str | None = None,
    fieldnames: tuple[str, ...] | None = None,
    quoting: int = csv.QUOTE_MINIMAL,
) -> list[SequenceExample]:
    """Read a csv / tsv / jsonl(.gz) file of texts into :class:`SequenceExample` s.

    ``fmt`` defaults to the file suffix; ``fieldnames`` names the columns of a file
    without header row. Labels are kept as strings (JSON numbers become ``"0"``, ``"1"``...).
    """
    path = Path(path)
    required = tuple(c for c in (text_column, text_pair_column, label_column) if c)
    examples = []
    for lineno, row in iter_records(path, fmt, fieldnames=fieldnames, required=required, quoting=quoting):
        text = row[text_column]
        if not isinstance(text, str):
            text = _value(path, lineno, row, text_column)
        pair = _value(path, lineno, row, text_pair_column) if text_pair_column else None
        label = _value(path, lineno, row, label_column).strip() if label_column else None
        examples.append(SequenceExample(text, pair, label))
    return _nonempty(path, examples)


# ---------------------------------------------------------------------------- GLUE


def read_sst2(path: str | Path) -> list[SequenceExample]:
    """GLUE SST-2: header ``sentence\\tlabel``, labels ``0``/``1``."""
    return read_table(path, "sentence", "label", fmt="tsv", quoting=csv.QUOTE_NONE)


def read_cola(path: str | Path) -> list[SequenceExample]:
    """GLUE CoLA: no header, ``source\\tlabel\\tmark\\tsentence``, labels ``0``/``1``."""
    return read_table(
        path, "sentence", "label", fmt="tsv", quoting=csv.QUOTE_NONE,
        fieldnames=("source", "label", "mark", "sentence"),
    )


def read_mrpc(path: str | Path) -> list[SequenceExample]:
    """GLUE MRPC: BOM + header ``Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String``."""
    return read_table(path, "#1 String", "Quality", "#2 String", fmt="tsv", quoting=csv.QUOTE_NONE)


def read_rte(path: str | Path) -> list[SequenceExample]:
    """GLUE RTE: header ``index\\tsentence1\\tsentence2\\tlabel`` with label strings."""
    return read_table(path, "sentence1", "label", "sentence2", fmt="tsv", quoting=csv.QUOTE_NONE)


def read_qnli(path: str | Path) -> list[SequenceExample]:
    """GLUE QNLI: header ``index\\tquestion\\tsentence\\tlabel`` with label strings."""
    return read_table(path, "question", "label", "sentence", fmt="tsv", quoting=csv.QUOTE_NONE)


# ------------------------------------------------------------------ AG News, IMDB


def read_agnews(path: str | Path) -> list[SequenceExample]:
    """AG News, either layout, labels as the names in :data:`AGNEWS_LABELS`.

    ``.csv``: the official layout with header ``Class Index,Title,Description``
    (class 1-4; text = title + " " + description). ``.tsv``: ``description\\tlabel-name``
    without header (the ALPS files: no title).
    """
    path = Path(path)
    if _format(path) == "tsv":
        examples = read_table(path, "text", "label", fmt="tsv", quoting=csv.QUOTE_NONE,
                              fieldnames=("text", "label"))
        for lineno, ex in enumerate(examples, 1):
            if ex.label not in AGNEWS_LABELS:
                raise DataError(f"{path}:{lineno}: unknown AG News label {ex.label!r}")
        return examples
    examples = []
    cols = ("Class Index", "Title", "Description")
    for lineno, row in iter_records(path, "csv", required=cols):
        index = row["Class Index"].strip()
        if index not in ("1", "2", "3", "4"):
            raise DataError(f"{path}:{lineno}: class index must be 1-4, got {index!r}")
        text = f"{row['Title'].strip()} {row['Description'].strip()}".strip()
        examples.append(SequenceExample(text, None, AGNEWS_LABELS[int(index) - 1]))
    return _nonempty(path, examples)


def read_imdb(path: str | Path) -> list[SequenceExample]:
    """IMDB ``jsonl.gz`` (``{"id", "label", "rating", "text"}``), labels ``"0"`` (neg) / ``"1"`` (pos)."""
    return read_table(path, "text", "label", fmt="jsonl")


# ----------------------------------------------------------------------- tagging


def read_conll2003(path: str | Path) -> list[TaggingExample]:
    """CoNLL-2003 ``word POS chunk NER`` lines (whitespace separated), blank line between sentences.

    The word is the first column and the tag the last, so 2-column ``word TAG`` files read
    too. ``-DOCSTART-`` lines are skipped.
    """
    path = Path(path)
    sentences, words, tags = [], [], []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                if words:
                    sentences.append(TaggingExample(words, tags))
                    words, tags = [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: expected 'word ... TAG', got {len(fields)} column")
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append(TaggingExample(words, tags))
    return _nonempty(path, sentences)


def read_conllu(path: str | Path, column: int = 5) -> list[TaggingExample]:
    """CoNLL-U: FORM plus the tag in 1-based ``column`` (5 = XPOS, Penn Treebank tags; 4 = UPOS).

    Comment lines, multiword-token lines (ids like ``1-2``) and empty nodes (``1.1``) are skipped.
    """
    path = Path(path)
    sentences, words, tags = [], [], []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    sentences.append(TaggingExample(words, tags))
                    words, tags = [], []
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise DataError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, got {len(fields)}")
            if "-" in fields[0] or "." in fields[0]:
                continue
            words.append(fields[1])
            tags.append(fields[column - 1])
    if words:
        sentences.append(TaggingExample(words, tags))
    return _nonempty(path, sentences)


# ---------------------------------------------------------------- multiple choice

_ANSWER_INDEX = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "1": 0, "2": 1, "3": 2, "4": 3}


def read_arc(path: str | Path) -> list[ChoiceExample]:
    """ARC as csv without header: ``question,A,B,C,D,answer``; answer is a letter A-E or a digit 1-4.

    Empty option cells are dropped (a few questions have 3 options), so ``label`` indexes
    the remaining choices. Rows whose answer points at a missing option (answer ``E``, or
    an empty cell: in the shared copy every digit-answer row lost all four options) are
    skipped with one ``UserWarning`` giving the count and line numbers.
    """
    path = Path(path)
    fields = ("question", "A", "B", "C", "D", "answer")
    examples, skipped = [], []
    for lineno, row in iter_records(path, "csv", fieldnames=fields):
        answer = row["answer"].strip().upper()
        if answer not in _ANSWER_INDEX:
            raise DataError(f"{path}:{lineno}: answer must be A-E or 1-4, got {answer!r}")
        options = [row[c].strip() for c in "ABCD"]
        index = _ANSWER_INDEX[answer]
        if index >= len(options) or not options[index]:
            skipped.append(lineno)
            continue
        label = sum(1 for o in options[:index] if o)
        examples.append(ChoiceExample(row["question"].strip(), [o for o in options if o], label))
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"{path}: skipped {len(skipped)} rows whose answer points at a missing option (lines {shown})",
            stacklevel=2,
        )
    return _nonempty(path, examples)


def read_swag(path: str | Path) -> list[ChoiceExample]:
    """SWAG (HF ``swag`` regular config) as csv or jsonl: ``sent1, sent2, ending0-3, label``.

    context = ``sent1``; choice *i* = ``sent2 + " " + ending<i>``. A missing label or -1
    (the unlabelled test split) gives ``label=None``.
    """
    path = Path(path)
    endings = tuple(f"ending{i}" for i in range(4))
    examples = []
    for lineno, row in iter_records(path, required=("sent1", "sent2", *endings)):
        raw = row.get("label")
        label = None
        if raw is not None and str(raw).strip() not in ("", "-1"):
            try:
                label = int(raw)
            except ValueError:
                raise DataError(f"{path}:{lineno}: label must be 0-3, got {raw!r}") from None
            if not 0 <= label < 4:
                raise DataError(f"{path}:{lineno}: label must be 0-3, got {raw!r}")
        context = _value(path, lineno, row, "sent1")
        start = row["sent2"] or ""
        choices = [f"{start} {_value(path, lineno, row, e)}".strip() for e in endings]
        examples.append(ChoiceExample(context, choices, label))
    return _nonempty(path, examples)
