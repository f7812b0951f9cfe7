"""Property-based tests of every reader (hypothesis): what a reader reads back is what was
written, whatever the text holds (quotes, delimiters, newlines, any Unicode, any of the
encodings), and any bytes at all give either examples or a one-line ``DataError``, never
another exception.

Bounded for CI: a fixed number of examples per property, derandomized (the same examples
on every run), no example database written.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskfit.data import (
    ChoiceExample,
    SequenceExample,
    TaggingExample,
    read_agnews,
    read_arc,
    read_conll2003,
    read_conllu,
    read_cola,
    read_imdb,
    read_mrpc,
    read_sst2,
    read_swag,
    read_table,
)
from maskfit.errors import DataError

EXAMPLES = int(os.environ.get("MASKFIT_PROPS_EXAMPLES", "60"))  # benchmarks/reliability.py asks for more
PROPS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Any text a file can hold: every code point but lone surrogates (no encoding writes those).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# Text rich in what breaks delimited files: quotes, delimiters, line ends, a BOM.
NASTY = st.text(st.sampled_from(list('ab ,\t"\'\n\r\\\ufeff\x00é€😀')) | st.characters(exclude_categories=("Cs",)),
                max_size=30)
LABEL = st.text(st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=8)
WORD = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda w: not any(c.isspace() for c in w) and w != "-DOCSTART-")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def _csv_text(rows, delimiter: str) -> str:
    # the csv module's default line end, \r\n: with "\n" its writer (Python < 3.12) leaves a lone "\r"
    # unquoted, and no reader can tell that line break from a row's end
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    return buf.getvalue()


@PROPS
@given(rows=st.lists(st.tuples(NASTY, NASTY, LABEL), min_size=1, max_size=8), fmt=st.sampled_from(["csv", "tsv"]),
       encoding=st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
def test_delimited_round_trip(scratch, rows, fmt, encoding):
    """What csv.writer writes (as pandas or a spreadsheet would), read_table reads back exactly."""
    f = scratch / f"train.{fmt}"
    f.write_text(_csv_text([("text", "pair", "label"), *rows], "\t" if fmt == "tsv" else ","), encoding=encoding,
                 newline="")
    try:
        got = read_table(f, "text", "label", "pair", encoding=encoding)
    except DataError as e:
        # the honest refusals: a blank label or pair (the reader needs both in every row)
        assert any(not label.strip() or not p.strip() for _, p, label in rows), e
        return
    assert got == [SequenceExample(t, p, label.strip()) for t, p, label in rows]


@PROPS
@given(rows=st.lists(st.fixed_dictionaries({"text": TEXT, "label": LABEL | st.integers(-5, 5)}), min_size=1,
                     max_size=8), ascii_only=st.booleans())
def test_jsonl_round_trip(scratch, rows, ascii_only):
    f = scratch / "train.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows), encoding="utf-8")
    try:
        got = read_table(f, "text", "label")
    except DataError as e:
        assert any(isinstance(r["label"], str) and not r["label"].strip() for r in rows), e
        return
    assert got == [SequenceExample(r["text"], None, str(r["label"]).strip()) for r in rows]


SENTENCES = st.lists(st.lists(st.tuples(WORD, WORD), min_size=1, max_size=6), min_size=1, max_size=5)


@PROPS
@given(sentences=SENTENCES, blank=st.sampled_from(["\n", "\r\n"]))
def test_conll2003_round_trip(scratch, sentences, blank):
    f = scratch / "train.txt"
    body = blank.join("".join(f"{w} NN O-CHUNK {t}{blank}" for w, t in s) for s in sentences)
    f.write_bytes(("-DOCSTART- -X- -X- O" + blank + blank + body).encode("utf-8"))
    assert read_conll2003(f) == [TaggingExample([w for w, _ in s], [t for _, t in s]) for s in sentences]


FORM = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\t\r\n"), min_size=1, max_size=12)


@PROPS
@given(sentences=st.lists(st.lists(st.tuples(FORM, FORM), min_size=1, max_size=6), min_size=1, max_size=5))
def test_conllu_round_trip(scratch, sentences):
    f = scratch / "train.conllu"
    lines = []
    for s in sentences:
        lines.append("# sent_id = x")
        lines += [f"{i}\t{w}\t_\tX\t{t}\t_\t_\t_\t_\t_" for i, (w, t) in enumerate(s, 1)]
        lines.append("")
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_conllu(f) == [TaggingExample([w for w, _ in s], [t for _, t in s]) for s in sentences]


@PROPS
@given(text=NASTY, encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-8", "koi8-r", "cp437"]))
def test_any_encoding_reads_with_encoding_and_is_named_without_it(scratch, text, encoding):
    """A file in any encoding reads back exactly with ``encoding``; read as UTF-8 it is either the
    same valid UTF-8 text or refused with the file, the first bad line and the --encoding hint."""
    try:
        data = _csv_text([("text", "label"), (text, "pos")], "\t").encode(encoding)
    except UnicodeEncodeError:
        return  # not representable in this encoding: nothing to test
    f = scratch / "enc.tsv"
    f.write_bytes(data)
    expected = [SequenceExample(text, None, "pos")]
    assert read_table(f, "text", "label", encoding=encoding) == expected
    try:
        as_utf8 = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        with pytest.raises(DataError, match=rf"{re.escape(str(f))}:\d+: not utf-8-sig text \(byte 0x[0-9a-f]{{2}} "
                                            r"at column \d+\); .*--encoding"):
            read_table(f, "text", "label")
    else:  # bytes that happen to be valid UTF-8 (ASCII text, say) read as that UTF-8 text
        row = list(csv.reader(io.StringIO(as_utf8, newline=""), delimiter="\t"))[1]
        assert read_table(f, "text", "label") == [SequenceExample(row[0], None, row[1])]


READERS = [
    ("t.csv", lambda p: read_table(p, "text", "label", "pair")),
    ("t.tsv", lambda p: read_table(p, "text", "label")),
    ("t.jsonl", lambda p: read_table(p, "text", "label")),
    ("sst2.tsv", read_sst2), ("cola.tsv", read_cola), ("mrpc.tsv", read_mrpc),
    ("ag.csv", read_agnews), ("ag.tsv", read_agnews), ("imdb.jsonl", read_imdb),
    ("ner.txt", read_conll2003), ("pos.conllu", read_conllu), ("arc.csv", read_arc),
    ("swag.jsonl", read_swag), ("swag.csv", read_swag),
]
# Structure-rich content: the characters files are made of, so that headers, rows and quotes appear.
STRUCTURED = st.lists(st.sampled_from(["text", "label", "pair", "sentence", "Quality", "#1 String", "#2 String",
                                       "Class Index", "Title", "Description", "sent1", "sent2", "ending0",
                                       "ending1", "ending2", "ending3", "1", "A", "E", "-1", "NaN", '"', "'", ",",
                                       "\t", "\n", "\r\n", " ", "{", "}", "[", "]", ":", '{"text": ', "null",
                                       "\x00", "\ufeff", "é", "-DOCSTART-", "#", "1-2", "2.1", "B-PER"]),
                    max_size=60).map("".join)


@settings(max_examples=max(1, EXAMPLES * 2 // 3), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(content=st.one_of(st.binary(max_size=300), STRUCTURED.map(lambda s: s.encode("utf-8")),
                         STRUCTURED.map(lambda s: s.encode("utf-16"))))
@pytest.mark.parametrize("name, reader", READERS, ids=[n for n, _ in READERS])
def test_any_bytes_give_examples_or_one_line_data_error(scratch, name, reader, content):
    f = scratch / name
    f.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read_arc warns about skipped rows
        try:
            examples = reader(f)
        except DataError as e:
            message = str(e)
            assert message and "\n" not in message and str(f) in message, message
            return
    assert examples and all(isinstance(ex, (SequenceExample, TaggingExample, ChoiceExample)) for ex in examples)
