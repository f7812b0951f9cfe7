"""Readers: one function per file format, each returning a list of examples.

Every reader raises :class:`maskfit.errors.DataError` on malformed input, with a one-line
message ``<file>:<line>: <what is wrong>`` (1-based line numbers; a row's line is the one
it starts on), and on a file with no rows. GLUE ``.tsv`` files are read with quoting
turned off (``csv.QUOTE_NONE``): their texts contain unbalanced double quotes (e.g.
MRPC). Generic user csv/tsv files are read with the csv module's default quoting, as
written by pandas or spreadsheets, in strict mode: a quote that is never closed, or
closed in the middle of a field, is an error at the line where its field starts (not
two rows silently merged). A header naming a column twice, and a JSON object with a
key twice, are errors (otherwise the last one would silently win).

Every reader takes ``encoding`` (default UTF-8, a leading BOM dropped); a file that does
not decode is refused with the first line that fails.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import json
import math
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from maskfit.data.examples import ChoiceExample, SequenceExample, TaggingExample
from maskfit.errors import DataError

AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
"""AG News class names, in the order of the official class indices 1-4."""


# --------------------------------------------------------------------------- helpers


DEFAULT_ENCODING = "utf-8-sig"
"""UTF-8, with a leading byte-order mark dropped (MRPC's files start with one)."""


def check_encoding(encoding: str | None) -> str:
    """The codec name to read with (``None``: UTF-8); ``DataError`` for an unknown one."""
    if encoding is None:
        return DEFAULT_ENCODING
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError, ValueError):
        raise DataError(f"unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
    return DEFAULT_ENCODING if name == "utf-8" else name  # a BOM is never part of the first column's name


def _open(path: Path, encoding: str = DEFAULT_ENCODING):
    """Open a text file (``.gz`` transparently) in ``encoding``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _undecodable(path: Path, encoding: str) -> DataError:
    """The error for a file that is not ``encoding`` text, naming its first bad line (rescans the bytes)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    hint = "pass its encoding with --encoding (e.g. --encoding latin-1)"
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    decoder.decode(raw)
                except UnicodeDecodeError as e:
                    return DataError(f"{path}:{lineno}: not {encoding} text (byte 0x{raw[e.start:e.start + 1].hex()} "
                                     f"at column {e.start + 1}); {hint}")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        pass  # the file ends inside a character
    except (OSError, EOFError, zlib.error):
        return DataError(f"{path}: cannot read it (corrupt or truncated)")
    return DataError(f"{path}: not {encoding} text; {hint}")


@contextlib.contextmanager
def _reading(path: Path, encoding: str | None):
    """``_open``, turning decoding and I/O failures anywhere inside the block into one-line ``DataError`` s."""
    encoding = check_encoding(encoding)
    try:
        with _open(path, encoding) as f:
            yield f
    except UnicodeError:
        raise _undecodable(path, encoding) from None
    except (OSError, EOFError, zlib.error) as e:  # a corrupt .gz, a folder, a vanished file
        raise DataError(f"{path}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None


def iter_lines(path: str | Path, encoding: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` of a text file, with the readers' errors."""
    path = Path(path)
    with _reading(path, encoding) as f:
        for lineno, line in enumerate(f, 1):
            yield lineno, line.rstrip("\r\n")


def _no_duplicate_keys(path: Path, lineno: int):
    def hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DataError(f"{path}:{lineno}: key {key!r} appears twice in one object")
            seen.add(key)
        return dict(pairs)

    return hook


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
    encoding: str | None = None,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, row)`` from a csv/tsv (header row unless ``fieldnames``) or jsonl file.

    Checks the column count of every delimited row, that the header names no column twice
    and that ``required`` columns exist (for delimited files in the header, for jsonl in
    every object). Blank lines are skipped. The line number is the one the row starts on.
    """
    path = Path(path)
    fmt = fmt or _format(path)
    with _reading(path, encoding) as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, object_pairs_hook=_no_duplicate_keys(path, lineno))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                except RecursionError:
                    raise DataError(f"{path}:{lineno}: invalid JSON (nested too deeply)") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                for col in required:
                    if col not in row:
                        raise DataError(f"{path}:{lineno}: missing column {col!r}")
                yield lineno, row
            return
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=quoting, strict=True)
        start = 1

        def rows() -> Iterator[list[str]]:
            nonlocal start
            while True:
                start = reader.line_num + 1
                try:
                    yield next(reader)
                except StopIteration:
                    return

        try:
            if fieldnames is None:
                header = next((r for r in rows() if r), None)
                if header is None:
                    raise DataError(f"{path}: empty file")
                header = [h.strip() for h in header]
                twice = [h for i, h in enumerate(header) if h in header[:i]]
                if twice:
                    raise DataError(f"{path}:{start}: the header names column {twice[0]!r} twice "
                                    f"(columns: {', '.join(header)}); rename one of them")
                for col in required:
                    if col not in header:
                        raise DataError(
                            f"{path}:{start}: missing column {col!r} (columns: {', '.join(header)})"
                        )
            else:
                header = list(fieldnames)
            for row in rows():
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{start}: expected {len(header)} columns, got {len(row)}"
                    )
                yield start, dict(zip(header, row))
        except csv.Error as e:
            if reader.line_num > start:  # the reader ran past the row's first line looking for a closing quote
                raise DataError(f"{path}:{start}: a quoted field that opens on this line is not closed properly "
                                f"(still open at line {reader.line_num}: {e}); fix or escape the quote") from None
            raise DataError(f"{path}:{start}: {e}") from None


def _value(path: Path, lineno: int, row: dict, column: str) -> str:
    """The non-empty string value of ``column`` (numbers from JSON are turned into strings)."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path}:{lineno}: empty value in column {column!r}")
    if isinstance(value, (dict, list)):
        raise DataError(f"{path}:{lineno}: column {column!r} holds a JSON {type(value).__name__}, not text or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{path}:{lineno}: column {column!r} holds {value}, not text or a number")
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
    encoding: str | None = None,
) -> list[SequenceExample]:
    """Read a csv / tsv / jsonl(.gz) file of texts into :class:`SequenceExample` s.

    ``fmt`` defaults to the file suffix; ``fieldnames`` names the columns of a file
    without header row. Labels are kept as strings (JSON numbers become ``"0"``, ``"1"``...).
    """
    path = Path(path)
    required = tuple(c for c in (text_column, text_pair_column, label_column) if c)
    examples = []
    for lineno, row in iter_records(path, fmt, fieldnames=fieldnames, required=required, quoting=quoting,
                                     encoding=encoding):
        text = row[text_column]
        if not isinstance(text, str):
            text = _value(path, lineno, row, text_column)
        pair = _value(path, lineno, row, text_pair_column) if text_pair_column else None
        label = _value(path, lineno, row, label_column).strip() if label_column else None
        examples.append(SequenceExample(text, pair, label))
    return _nonempty(path, examples)


# ---------------------------------------------------------------------------- GLUE


def read_sst2(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """GLUE SST-2: header ``sentence\\tlabel``, labels ``0``/``1``."""
    return read_table(path, "sentence", "label", fmt="tsv", quoting=csv.QUOTE_NONE, encoding=encoding)


def read_cola(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """GLUE CoLA: no header, ``source\\tlabel\\tmark\\tsentence``, labels ``0``/``1``."""
    return read_table(
        path, "sentence", "label", fmt="tsv", quoting=csv.QUOTE_NONE,
        fieldnames=("source", "label", "mark", "sentence"), encoding=encoding,
    )


def read_mrpc(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """GLUE MRPC: BOM + header ``Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String``."""
    return read_table(path, "#1 String", "Quality", "#2 String", fmt="tsv", quoting=csv.QUOTE_NONE,
                      encoding=encoding)


def read_rte(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """GLUE RTE: header ``index\\tsentence1\\tsentence2\\tlabel`` with label strings."""
    return read_table(path, "sentence1", "label", "sentence2", fmt="tsv", quoting=csv.QUOTE_NONE,
                      encoding=encoding)


def read_qnli(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """GLUE QNLI: header ``index\\tquestion\\tsentence\\tlabel`` with label strings."""
    return read_table(path, "question", "label", "sentence", fmt="tsv", quoting=csv.QUOTE_NONE,
                      encoding=encoding)


# ------------------------------------------------------------------ AG News, IMDB


def read_agnews(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """AG News, either layout, labels as the names in :data:`AGNEWS_LABELS`.

    ``.csv``: the official layout with header ``Class Index,Title,Description``
    (class 1-4; text = title + " " + description). ``.tsv``: ``description\\tlabel-name``
    without header (the ALPS files: no title).
    """
    path = Path(path)
    if _format(path) == "tsv":
        examples = read_table(path, "text", "label", fmt="tsv", quoting=csv.QUOTE_NONE,
                              fieldnames=("text", "label"), encoding=encoding)
        for lineno, ex in enumerate(examples, 1):
            if ex.label not in AGNEWS_LABELS:
                raise DataError(f"{path}:{lineno}: unknown AG News label {ex.label!r}")
        return examples
    examples = []
    cols = ("Class Index", "Title", "Description")
    for lineno, row in iter_records(path, "csv", required=cols, encoding=encoding):
        index = row["Class Index"].strip()
        if index not in ("1", "2", "3", "4"):
            raise DataError(f"{path}:{lineno}: class index must be 1-4, got {index!r}")
        text = f"{row['Title'].strip()} {row['Description'].strip()}".strip()
        examples.append(SequenceExample(text, None, AGNEWS_LABELS[int(index) - 1]))
    return _nonempty(path, examples)


def read_imdb(path: str | Path, encoding: str | None = None) -> list[SequenceExample]:
    """IMDB ``jsonl.gz`` (``{"id", "label", "rating", "text"}``), labels ``"0"`` (neg) / ``"1"`` (pos)."""
    return read_table(path, "text", "label", fmt="jsonl", encoding=encoding)


# ----------------------------------------------------------------------- tagging


def read_conll2003(path: str | Path, encoding: str | None = None) -> list[TaggingExample]:
    """CoNLL-2003 ``word POS chunk NER`` lines (whitespace separated), blank line between sentences.

    The word is the first column and the tag the last, so 2-column ``word TAG`` files read
    too. ``-DOCSTART-`` lines are skipped.
    """
    path = Path(path)
    sentences, words, tags = [], [], []
    with _reading(path, encoding) as f:
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


def read_conllu(path: str | Path, column: int = 5, encoding: str | None = None) -> list[TaggingExample]:
    """CoNLL-U: FORM plus the tag in 1-based ``column`` (5 = XPOS, Penn Treebank tags; 4 = UPOS).

    Comment lines, multiword-token lines (ids like ``1-2``) and empty nodes (``1.1``) are skipped.
    """
    path = Path(path)
    sentences, words, tags = [], [], []
    with _reading(path, encoding) as f:
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


def read_arc(path: str | Path, encoding: str | None = None) -> list[ChoiceExample]:
    """ARC as csv without header: ``question,A,B,C,D,answer``; answer is a letter A-E or a digit 1-4.

    Empty option cells are dropped (a few questions have 3 options), so ``label`` indexes
    the remaining choices. Rows whose answer points at a missing option (answer ``E``, or
    an empty cell: in the shared copy every digit-answer row lost all four options) are
    skipped with one ``UserWarning`` giving the count and line numbers.
    """
    path = Path(path)
    fields = ("question", "A", "B", "C", "D", "answer")
    examples, skipped = [], []
    for lineno, row in iter_records(path, "csv", fieldnames=fields, encoding=encoding):
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


def read_swag(path: str | Path, encoding: str | None = None) -> list[ChoiceExample]:
    """SWAG (HF ``swag`` regular config) as csv or jsonl: ``sent1, sent2, ending0-3, label``.

    context = ``sent1``; choice *i* = ``sent2 + " " + ending<i>``. A missing label or -1
    (the unlabelled test split) gives ``label=None``.
    """
    path = Path(path)
    endings = tuple(f"ending{i}" for i in range(4))
    examples = []
    for lineno, row in iter_records(path, required=("sent1", "sent2", *endings), encoding=encoding):
        raw = row.get("label")
        label = None
        if raw is not None and str(raw).strip() not in ("", "-1"):
            text = _value(path, lineno, row, "label").strip()
            if text not in ("0", "1", "2", "3"):
                raise DataError(f"{path}:{lineno}: label must be 0-3, got {raw!r}")
            label = int(text)
        context = _value(path, lineno, row, "sent1")
        start = row["sent2"] if isinstance(row["sent2"], str) else (
            "" if row["sent2"] is None else _value(path, lineno, row, "sent2"))
        choices = [f"{start} {_value(path, lineno, row, e)}".strip() for e in endings]
        examples.append(ChoiceExample(context, choices, label))
    return _nonempty(path, examples)
