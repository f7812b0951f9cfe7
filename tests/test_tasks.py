"""Task registry: built-in tasks on the real data, custom files, hub names, label checks."""

import time
from pathlib import Path

import pytest

from maskfit.data import ChoiceExample, SequenceExample
from maskfit.errors import DataError
from maskfit.tasks import TASKS, check_labels, get_task, resolve_data_dir

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_registry_covers_the_paper_tasks():
    assert set(TASKS) == {"sst2", "cola", "agnews", "imdb", "mrpc", "rte", "qnli", "ner", "pos",
                          "arc-easy", "arc-challenge", "swag"}
    assert TASKS["cola"].metric == "mcc" and TASKS["ner"].metric == "f1"
    assert TASKS["pos"].metric == "word_accuracy" and TASKS["ner"].type == "tagging"
    assert {TASKS[n].type for n in ("arc-easy", "arc-challenge", "swag")} == {"choice"}


def test_builtin_task_loads_and_checks_labels():
    task = get_task("rte", data_dir=DATA)
    assert (task.type, task.metric, task.eval_split) == ("sequence", "accuracy", "dev")
    assert check_labels(task) == ("entailment", "not_entailment")
    assert len(task.load("dev")) == 277 and task.load("dev") is task.load("dev")  # cached
    assert not task.has_split("test")
    with pytest.raises(DataError, match="no test split"):
        task.load("test")


def test_agnews_trains_on_subset_and_evaluates_on_test():
    task = get_task("agnews", data_dir=DATA)
    assert task.eval_split == "test" and not task.has_split("dev")
    assert len(task.load("train")) == 10_001 and len(task.load("test")) == 7_600
    assert task.labels == ("World", "Sports", "Business", "Sci/Tech")
    assert check_labels(task) == task.labels


def test_pos_labels_derived_sorted_from_train():
    task = get_task("pos", data_dir=DATA)
    labels = task.labels
    assert len(labels) == 49 and list(labels) == sorted(labels) and "NNP" in labels
    assert len(task.load("test")) == 2_077


def test_qnli_train_refused_dev_available():
    task = get_task("qnli", data_dir=DATA)
    assert len(task.load("dev")) == 5_463
    with pytest.raises(DataError, match="QNLI train is not available here"):
        task.load("train")


def test_swag_sample_is_train_and_dev():
    task = get_task("swag", data_dir=DATA)
    assert task.load("train") == task.load("dev") and len(task.load("dev")) == 10
    assert "10 real rows" in task.description
    assert check_labels(task) == ()


def test_unknown_task_lists_known_ones():
    with pytest.raises(DataError, match=r"unknown task 'sst3'.*sst2.*arc-challenge"):
        get_task("sst3", data_dir=DATA)
    with pytest.raises(DataError, match="only apply to custom"):
        get_task("sst2", data_dir=DATA, label_column="label")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKFIT_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert get_task("sst2").data_dir == tmp_path
    with pytest.raises(DataError, match="file not found"):
        get_task("sst2").load("train")
    monkeypatch.setenv("MASKFIT_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir()
    monkeypatch.delenv("MASKFIT_DATA_DIR")
    monkeypatch.chdir(tmp_path)  # no ../shared/data here: falls back to the project-relative dir
    assert resolve_data_dir().resolve() == DATA.resolve()


@pytest.mark.parametrize("fmt, train, dev", [
    ("csv", 'text,other,label\n"hi, there",x,pos\nbad,y,neg\n', "text,other,label\nok,z,pos\n"),
    ("tsv", "label\ttext\tother\npos\thi, there\tx\nneg\tbad\ty\n", "label\ttext\tother\npos\tok\tz\n"),
    ("jsonl", '{"text": "hi, there", "other": "x", "label": "pos"}\n{"text": "bad", "other": "y", "label": "neg"}\n',
     '{"text": "ok", "other": "z", "label": "pos"}\n'),
])
def test_custom_file_round_trip(tmp_path, fmt, train, dev):
    (tmp_path / f"train.{fmt}").write_text(train)
    (tmp_path / f"dev.{fmt}").write_text(dev)
    task = get_task(f"{fmt}:{tmp_path / f'train.{fmt}'}", dev=str(tmp_path / f"dev.{fmt}"),
                    text_column="text", text_pair_column="other", label_column="label")
    assert (task.type, task.metric, task.eval_split) == ("sequence", "accuracy", "dev")
    assert task.load("train") == [SequenceExample("hi, there", "x", "pos"), SequenceExample("bad", "y", "neg")]
    assert check_labels(task) == ("neg", "pos")
    again = get_task(**task.args)  # what run.json stores recreates the task
    assert again.load("dev") == task.load("dev") == [SequenceExample("ok", "z", "pos")]


def test_custom_numeric_labels_sorted_by_value(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(f'{{"t": "x{i}", "y": {i}}}\n' for i in (10, 2, 1)))
    assert get_task(f"jsonl:{f}", text_column="t", label_column="y").labels == ("1", "2", "10")


def test_custom_task_needs_columns_and_file(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match="needs text_column and label_column"):
        get_task(f"csv:{f}", text_column="text")
    with pytest.raises(DataError, match="file not found"):
        get_task(f"csv:{tmp_path / 'nope.csv'}", text_column="text", label_column="label")


def test_check_labels_rejects_dev_label_unseen_in_train(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "dev.csv").write_text("text,label\nc,pos\nd,neutral\n")
    task = get_task(f"csv:{tmp_path / 'train.csv'}", dev=str(tmp_path / "dev.csv"),
                    text_column="text", label_column="label")
    with pytest.raises(DataError, match=r"dev\.csv: label 'neutral' does not occur in the train split"):
        check_labels(task)


def test_check_labels_rejects_unlabelled_and_empty_splits(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    task = get_task(f"csv:{empty}", text_column="text", label_column="label")
    with pytest.raises(DataError, match=r"empty\.csv: no rows"):
        check_labels(task)
    task = get_task("swag", data_dir=DATA)
    task._cache["dev"] = [ChoiceExample("c", ["a", "b"], None)]  # e.g. SWAG's unlabelled test rows
    with pytest.raises(DataError, match="example 1 has no label"):
        check_labels(task)


def test_check_labels_rejects_train_label_outside_fixed_set(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nodd\t2\n")
    with pytest.raises(DataError, match="label '2' is not a label of task 'sst2'"):
        check_labels(get_task("sst2", data_dir=tmp_path))


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = get_task("glue/sst2")  # lazy: nothing fetched yet
    assert task.type == "sequence"
    start = time.monotonic()
    with pytest.raises(DataError, match=r"could not fetch hub dataset 'glue/sst2' \(offline\?\)"):
        task.load("train")
    assert time.monotonic() - start < 10
    assert get_task("glue/cola").metric == "mcc"


def test_hub_loader_maps_columns_and_class_names(monkeypatch, tmp_path):
    """A local dataset folder goes through the same datasets.load_dataset path as a hub name."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    features = datasets.Features({"question": datasets.Value("string"), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    (tmp_path / "qnli" / "data").mkdir(parents=True)
    for split, rows in [("train", {"question": ["q1", "q2"], "sentence": ["s1", "s2"], "label": [1, 0]}),
                        ("validation", {"question": ["q3"], "sentence": ["s3"], "label": [-1]})]:
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(tmp_path / "qnli" / "data" / f"{split}-00000.parquet"))
    task = get_task(str(tmp_path / "qnli"))
    assert task.labels == ("entailment", "not_entailment")
    assert task.load("train") == [SequenceExample("q1", "s1", "not_entailment"),
                                  SequenceExample("q2", "s2", "entailment")]
    assert task.load("dev") == [SequenceExample("q3", "s3", None)]  # GLUE test-style -1 -> unlabelled
    assert not task.has_split("test")
