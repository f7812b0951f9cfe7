"""Readers on the real shared data (row counts from /work/shared/data/README.md) and on malformed files."""

from collections import Counter
from pathlib import Path

import pytest

from maskfit.data import (
    AGNEWS_LABELS,
    ChoiceExample,
    SequenceExample,
    TaggingExample,
    read_agnews,
    read_arc,
    read_cola,
    read_conll2003,
    read_conllu,
    read_imdb,
    read_mrpc,
    read_qnli,
    read_rte,
    read_sst2,
    read_swag,
    read_table,
)
from maskfit.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EWT = "pos/ud_english_ewt/en_ewt-ud-{}.conllu"
ARC = "swag/substitute_arc/{}.csv"


@pytest.mark.parametrize("reader, rel, n", [
    (read_sst2, "sst2/train.tsv", 67_349), (read_sst2, "sst2/dev.tsv", 872),
    (read_mrpc, "mrpc/train.tsv", 3_668), (read_mrpc, "mrpc/dev.tsv", 408),
    (read_cola, "cola/train.tsv", 8_551), (read_cola, "cola/dev.tsv", 1_043),
    (read_rte, "rte/train.tsv", 2_490), (read_rte, "rte/dev.tsv", 277),
    (read_qnli, "qnli/dev.tsv", 5_463),
    (read_agnews, "agnews/test.csv", 7_600), (read_agnews, "agnews/train_subset_10k_alps.tsv", 10_001),
    (read_conll2003, "ner/train.txt", 14_041), (read_conll2003, "ner/valid.txt", 3_250),
    (read_conll2003, "ner/test.txt", 3_453),
    (read_conllu, EWT.format("train"), 12_544), (read_conllu, EWT.format("dev"), 2_001),
    (read_conllu, EWT.format("test"), 2_077),
    (read_swag, "swag/sample10_transformers_fixture.jsonl", 10),
])
def test_real_row_counts(reader, rel, n):
    assert len(reader(DATA / rel)) == n


def test_imdb_both_splits_balanced():
    for split in ("train", "test"):
        examples = read_imdb(DATA / f"imdb/{split}.jsonl.gz")
        assert len(examples) == 25_000
        assert Counter(ex.label for ex in examples) == {"0": 12_500, "1": 12_500}
    assert examples[0].text.startswith("I went and saw this movie last night")


def test_glue_label_sets_and_class_balance():
    sst2 = read_sst2(DATA / "sst2/train.tsv")
    assert Counter(ex.label for ex in sst2) == {"0": 29_780, "1": 37_569}
    rte = read_rte(DATA / "rte/train.tsv")
    assert Counter(ex.label for ex in rte) == {"entailment": 1_249, "not_entailment": 1_241}
    assert all(ex.text_pair for ex in rte)
    cola = read_cola(DATA / "cola/dev.tsv")
    assert Counter(ex.label for ex in cola) == {"1": 721, "0": 322}
    assert cola[0] == SequenceExample("The sailors rode the breeze clear of the rocks.", None, "1")


def test_mrpc_keeps_bom_header_and_unbalanced_quotes():
    dev = read_mrpc(DATA / "mrpc/dev.tsv")
    assert Counter(ex.label for ex in dev) == {"0": 129, "1": 279}
    # the first pair's second sentence opens a quote it never closes: QUOTE_NONE keeps it verbatim
    assert dev[0].text.startswith("He said the foodservice pie business")
    assert dev[0].text_pair == '"The foodservice pie business does not fit our long-term growth strategy.'


def test_agnews_both_layouts_share_label_names():
    test = read_agnews(DATA / "agnews/test.csv")
    assert Counter(ex.label for ex in test) == {name: 1_900 for name in AGNEWS_LABELS}
    assert test[0] == SequenceExample(
        "Fears for T N pension after talks Unions representing workers at Turner   Newall say they are "
        "'disappointed' after talks with stricken parent firm Federal Mogul.", None, "Business")
    train = read_agnews(DATA / "agnews/train_subset_10k_alps.tsv")
    assert Counter(ex.label for ex in train) == {
        "Sci/Tech": 2_538, "World": 2_509, "Business": 2_496, "Sports": 2_458}


def test_conll2003_sentences_tokens_and_tags():
    train = read_conll2003(DATA / "ner/train.txt")
    assert sum(len(ex.words) for ex in train) == 203_621
    assert train[1] == TaggingExample(["Peter", "Blackburn"], ["B-PER", "I-PER"])
    tags = Counter(t for ex in train for t in ex.tags)
    assert set(tags) == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
    assert tags["B-LOC"] == 7_140 and tags["B-PER"] == 6_600  # entity counts of the official data


def test_conll2003_skips_docstart(tmp_path):
    f = tmp_path / "eng.train"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    assert read_conll2003(f) == [TaggingExample(["EU", "rejects"], ["B-ORG", "O"]),
                                 TaggingExample(["Peter"], ["B-PER"])]


def test_conllu_xpos_and_word_counts():
    # 204,577 syntactic words = the UD stats: multiword-token lines (2,614) and empty nodes (37) skipped
    train = read_conllu(DATA / EWT.format("train"))
    assert sum(len(ex.words) for ex in train) == 204_577
    dev = read_conllu(DATA / EWT.format("dev"))
    assert sum(len(ex.words) for ex in dev) == 25_147
    assert dev[0] == TaggingExample(["From", "the", "AP", "comes", "this", "story", ":"],
                                    ["IN", "DT", "NNP", "VBZ", "DT", "NN", ":"])
    tags = {t for ex in train for t in ex.tags}
    assert len(tags) == 49 and {"NN", "VBZ", "-LRB-", "PRP$", "``"} <= tags


def test_conllu_multiword_empty_nodes_and_upos(tmp_path):
    f = tmp_path / "x.conllu"
    row = "{}\t{}\t_\t{}\t{}\t_\t_\t_\t_\t_\n"
    f.write_text("# text = don't go\n" + "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
                 + row.format(1, "do", "AUX", "VBP") + row.format(2, "n't", "PART", "RB")
                 + row.format("2.1", "x", "X", "XX") + row.format(3, "go", "VERB", "VB") + "\n")
    assert read_conllu(f) == [TaggingExample(["do", "n't", "go"], ["VBP", "RB", "VB"])]
    assert read_conllu(f, column=4)[0].tags == ["AUX", "PART", "VERB"]


@pytest.mark.parametrize("name, rows, kept", [
    # every digit-answer row of this copy lost its four options; plus the 'E' answers
    ("arc_easy_train", 2_251, 2_147), ("arc_easy_dev", 570, 549),
    ("arc_challenge_train", 1_119, 1_096), ("arc_challenge_dev", 299, 294),
])
def test_arc_skips_rows_with_missing_answer_option(name, rows, kept):
    with pytest.warns(UserWarning, match=f"skipped {rows - kept} rows"):
        examples = read_arc(DATA / ARC.format(name))
    assert len(examples) == kept
    assert all(ex.label is not None and 0 <= ex.label < len(ex.choices) and all(ex.choices) for ex in examples)
    assert {len(ex.choices) for ex in examples} <= {3, 4}


def test_arc_answer_formats(tmp_path):
    f = tmp_path / "arc.csv"
    f.write_text('"Q1, with comma",a,b,c,d,C\nQ2,a,b,c,,2\nQ3,a,b,c,d,E\nQ4,,,,,1\n')
    with pytest.warns(UserWarning, match=r"skipped 2 rows .*lines 3, 4\)"):
        examples = read_arc(f)
    assert examples == [ChoiceExample("Q1, with comma", ["a", "b", "c", "d"], 2),
                        ChoiceExample("Q2", ["a", "b", "c"], 1)]


def test_swag_jsonl_and_csv(tmp_path):
    sample = read_swag(DATA / "swag/sample10_transformers_fixture.jsonl")
    assert sample[0].context == "Members of the procession walk down the street holding small horn brass instruments."
    assert sample[0].choices[0] == "A drum line passes by walking down the street playing their instruments."
    assert [ex.label for ex in sample[:2]] == [0, 3]
    f = tmp_path / "val.csv"
    f.write_text("video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
                 "v1,1,x,A man sits.,He,gold,eats.,runs.,sleeps.,sings.,2\n"
                 "v2,2,x,A dog barks.,It,gold,a,b,c,d,-1\n")
    assert read_swag(f) == [ChoiceExample("A man sits.", ["He eats.", "He runs.", "He sleeps.", "He sings."], 2),
                            ChoiceExample("A dog barks.", ["It a", "It b", "It c", "It d"], None)]


# ------------------------------------------------------------------ malformed input


def test_short_row_names_file_and_line(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\nfine,pos\n\"multi\nline\",neg\nonly one field\n")
    with pytest.raises(DataError, match=r"train\.csv:5: expected 2 columns, got 1"):
        read_table(f, "text", "label")


def test_missing_column_names_it(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("text\tlab\nhello\tpos\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: missing column 'label'"):
        read_table(f, "text", "label")
    j = tmp_path / "train.jsonl"
    j.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing column 'label'"):
        read_table(j, "text", "label")


def test_empty_files(tmp_path):
    for name, content in [("a.csv", ""), ("b.csv", "text,label\n"), ("c.jsonl", "\n\n"), ("d.txt", "\n")]:
        f = tmp_path / name
        f.write_text(content)
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            read_conll2003(f) if name.endswith(".txt") else read_table(f, "text", "label")


def test_other_malformed_inputs(tmp_path):
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid JSON"):
        read_table(bad_json, "text", "label")
    empty_label = tmp_path / "y.csv"
    empty_label.write_text("text,label\na,pos\nb,\n")
    with pytest.raises(DataError, match=r"y\.csv:3: empty value in column 'label'"):
        read_table(empty_label, "text", "label")
    conll = tmp_path / "z.txt"
    conll.write_text("EU NNP B-NP B-ORG\nlonely\n")
    with pytest.raises(DataError, match=r"z\.txt:2:"):
        read_conll2003(conll)
    conllu = tmp_path / "w.conllu"
    conllu.write_text("1\tfrom\tfrom\tADP\n")
    with pytest.raises(DataError, match=r"w\.conllu:1: expected 10"):
        read_conllu(conllu)
    agnews = tmp_path / "test.csv"
    agnews.write_text("Class Index,Title,Description\n5,t,d\n")
    with pytest.raises(DataError, match=r"test\.csv:2: class index must be 1-4"):
        read_agnews(agnews)
    with pytest.raises(DataError, match="file not found"):
        read_sst2(tmp_path / "nope.tsv")


# ------------------------------------------------------------------ hostile and careless input


def test_duplicate_header_name_is_refused(tmp_path):
    for name, content, line in [("a.csv", "text,label,text\nx,pos,y\n", 1),
                                ("b.tsv", "\n\nid\ttext\tlabel\tlabel\n1\tx\tpos\tneg\n", 3)]:
        f = tmp_path / name
        f.write_text(content)
        with pytest.raises(DataError, match=rf"{name.replace('.', chr(92) + '.')}:{line}: the header names column "
                                            r"'(text|label)' twice"):
            read_table(f, "text", "label")


def test_duplicate_json_key_is_refused(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "pos", "text": "c"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: key 'text' appears twice"):
        read_table(f, "text", "label")


@pytest.mark.parametrize("content, line", [
    # an unterminated quote used to swallow the next rows into one text
    ('text,label\ngood,pos\n"hello world,pos\ngoodbye,neg\n', 3),
    ('text,label\n"hello world,pos\ngoodbye,neg\n"fine",pos\n', 2),
    ('text,label\nfine,pos\n"x"y,neg\n', 3),
])
def test_unterminated_or_stray_quote_is_reported_where_its_row_starts(tmp_path, content, line):
    f = tmp_path / "t.csv"
    f.write_text(content)
    with pytest.raises(DataError, match=rf"t\.csv:{line}: "):
        read_table(f, "text", "label")


def test_tsv_stray_quote_reported_at_its_line_not_at_the_end(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text("text\tlabel\n" + "fine\tpos\n" * 3 + '"broken\tneg\n' + "more\tpos\n" * 50)
    with pytest.raises(DataError, match=r"t\.tsv:5: a quoted field that opens on this line is not closed"):
        read_table(f, "text", "label")
    # a legitimately quoted multi-line field still reads, and later errors point at their own line
    ok = tmp_path / "ok.tsv"
    ok.write_text('text\tlabel\n"two\nlines"\tpos\nx\tneg\textra\n')
    with pytest.raises(DataError, match=r"ok\.tsv:4: expected 2 columns, got 3"):
        read_table(ok, "text", "label")


def test_non_utf8_file_is_named_with_its_line_and_reads_with_its_encoding(tmp_path):
    f = tmp_path / "latin.tsv"
    f.write_bytes("text\tlabel\nnaive\tpos\ncaf\u00e9 cr\u00e8me\tneg\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.tsv:3: not utf-8-sig text \(byte 0xe9 at column 4\).*--encoding"):
        read_table(f, "text", "label")
    assert read_table(f, "text", "label", encoding="latin-1")[1] == SequenceExample("caf\u00e9 cr\u00e8me", None, "neg")
    conll = tmp_path / "x.conll"
    conll.write_bytes("M\u00fcller B-PER\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"x\.conll:1: not utf-8-sig text"):
        read_conll2003(conll)
    assert read_conll2003(conll, encoding="cp1252") == [TaggingExample(["M\u00fcller"], ["B-PER"])]
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        read_table(f, "text", "label", encoding="klingon")


def test_corrupt_gzip_and_json_values_are_data_errors(tmp_path):
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: cannot read it"):
        read_imdb(gz)
    j = tmp_path / "x.jsonl"
    for row, needle in [('{"text": "a", "label": NaN}', "holds nan"), ('{"text": "a", "label": [1]}', "JSON list"),
                        ('{"text": {"a": 1}, "label": 1}', "JSON dict"), ("[" * 100_000, "invalid JSON")]:
        j.write_text(row + "\n")
        with pytest.raises(DataError, match=rf"x\.jsonl:1: .*{needle}"):
            read_table(j, "text", "label")
