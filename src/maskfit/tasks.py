"""The task registry, as data: task name -> :class:`TaskSpec`; :func:`get_task` resolves one.

Three kinds of names:

- built-in tasks (:data:`TASKS`), read from the shared data directory
  (``data_dir`` argument, else ``$MASKFIT_DATA_DIR``, else ``<cwd>/../shared/data``,
  else ``../shared/data`` next to the project checkout);
- custom files ``csv:PATH``, ``tsv:PATH``, ``jsonl:PATH`` (PATH = train file; ``dev`` /
  ``test`` give the other splits; ``text_column`` and ``label_column`` are required,
  ``text_pair_column`` optional): a sequence task scored by accuracy;
- Hugging Face hub datasets, any other name with a ``/`` (``glue/sst2``, ``owner/name``
  or ``owner/name:config``; a local dataset folder works too), loaded lazily through
  ``datasets.load_dataset`` as sequence tasks (text / pair / label columns guessed, or
  given). Offline (``HF_HUB_OFFLINE``, or the hub unreachable within 3 s) only the
  local cache is tried, so failure is immediate.

Splits are called ``train``, ``dev`` and ``test`` everywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from maskfit.data import readers
from maskfit.data.examples import ChoiceExample, SequenceExample, TaggingExample
from maskfit.errors import DataError

SPLITS = ("train", "dev", "test")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    ``files`` maps split -> path relative to the data dir; ``reader`` reads one file;
    ``labels`` is the ordered label-name tuple, or None to derive it (sorted) from the
    train split; choice tasks have ``labels=()``. ``unavailable`` maps a split to the
    reason it is missing.
    """

    name: str
    type: str
    metric: str
    files: Mapping[str, str]
    reader: Callable[[Path], list] | None
    labels: tuple[str, ...] | None = None
    eval_split: str = "dev"
    description: str = ""
    unavailable: Mapping[str, str] = field(default_factory=dict)


_ARC = "swag/substitute_arc/"
TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("sst2", "sequence", "accuracy", {"train": "sst2/train.tsv", "dev": "sst2/dev.tsv"},
             readers.read_sst2, BINARY, description="GLUE SST-2 binary sentiment (0 = negative, 1 = positive)."),
    TaskSpec("cola", "sequence", "mcc", {"train": "cola/train.tsv", "dev": "cola/dev.tsv"},
             readers.read_cola, BINARY, description="GLUE CoLA acceptability (1 = acceptable), scored by MCC."),
    TaskSpec("mrpc", "sequence", "accuracy", {"train": "mrpc/train.tsv", "dev": "mrpc/dev.tsv"},
             readers.read_mrpc, BINARY, description="GLUE MRPC paraphrase pairs (1 = paraphrase)."),
    TaskSpec("rte", "sequence", "accuracy", {"train": "rte/train.tsv", "dev": "rte/dev.tsv"},
             readers.read_rte, ENTAILMENT, description="GLUE RTE textual entailment pairs."),
    TaskSpec("qnli", "sequence", "accuracy", {"dev": "qnli/dev.tsv"}, readers.read_qnli, ENTAILMENT,
             description="GLUE QNLI question/sentence entailment; only the dev split (5,463) is available.",
             unavailable={"train": "QNLI train is not available here (the shared data has the dev split only); "
                                   "use glue/qnli from the hub or another task"}),
    TaskSpec("agnews", "sequence", "accuracy",
             {"train": "agnews/train_subset_10k_alps.tsv", "test": "agnews/test.csv"},
             readers.read_agnews, readers.AGNEWS_LABELS, eval_split="test",
             description="AG News topics; train is a 10,001-row sample of the official train set "
                         "(descriptions only, no titles), evaluated on the official test set (7,600)."),
    TaskSpec("imdb", "sequence", "accuracy", {"train": "imdb/train.jsonl.gz", "test": "imdb/test.jsonl.gz"},
             readers.read_imdb, BINARY, eval_split="test",
             description="IMDB reviews, binary sentiment with SST-2's labels (0 = neg, 1 = pos)."),
    TaskSpec("ner", "tagging", "f1",
             {"train": "ner/train.txt", "dev": "ner/valid.txt", "test": "ner/test.txt"},
             readers.read_conll2003, NER_LABELS,
             description="CoNLL-2003 English NER (IOB2 tags), scored by seqeval entity micro-F1."),
    TaskSpec("pos", "tagging", "word_accuracy",
             {s: f"pos/ud_english_ewt/en_ewt-ud-{s}.conllu" for s in SPLITS}, readers.read_conllu,
             description="POS tagging with Penn Treebank tags (XPOS) of UD English-EWT, "
                         "a substitute for the paper's PTB WSJ."),
    TaskSpec("arc-easy", "choice", "accuracy",
             {"train": _ARC + "arc_easy_train.csv", "dev": _ARC + "arc_easy_dev.csv"}, readers.read_arc, (),
             description="ARC-Easy science questions (substitute for SWAG); rows whose answer option "
                         "is missing are skipped."),
    TaskSpec("arc-challenge", "choice", "accuracy",
             {"train": _ARC + "arc_challenge_train.csv", "dev": _ARC + "arc_challenge_dev.csv"},
             readers.read_arc, (),
             description="ARC-Challenge science questions (substitute for SWAG); rows whose answer "
                         "option is missing are skipped."),
    TaskSpec("swag", "choice", "accuracy",
             {"train": "swag/sample10_transformers_fixture.jsonl", "dev": "swag/sample10_transformers_fixture.jsonl"},
             readers.read_swag, (),
             description="SWAG: only 10 real rows are available, used as both train and dev "
                         "(format checks only, scores mean nothing; use arc-easy / arc-challenge)."),
)}

_CUSTOM_FORMATS = ("csv", "tsv", "jsonl")


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: argument, ``$MASKFIT_DATA_DIR``, ``<cwd>/../shared/data``, project-relative."""
    if data_dir is None:
        data_dir = os.environ.get("MASKFIT_DATA_DIR")
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data dir {path} does not exist")
        return path
    for candidate in (Path.cwd().parent / "shared" / "data",
                      Path(__file__).resolve().parents[3] / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise DataError("no data dir: pass --data-dir (or set MASKFIT_DATA_DIR)")


def _integer(s: str) -> int | None:
    try:
        return int(s) if s.isascii() else None  # int() also reads "٣" and "1_0"; labels are compared as typed
    except ValueError:
        return None


def _natural_sorted(labels) -> tuple[str, ...]:
    """Sort label names, numeric ones by value ("2" before "10")."""
    return tuple(sorted(labels, key=lambda s: (0, _integer(s), "") if _integer(s) is not None else (1, 0, s)))


def _number(s: str) -> float | None:
    try:
        x = float(s)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _same_number(labels) -> tuple[str, str] | None:
    """Two label names that are the same number written differently ("0" and "0.0"), or None."""
    seen: dict[float, str] = {}
    for label in sorted(labels):
        x = _number(label)
        if x is not None:
            if x in seen:
                return seen[x], label
            seen[x] = label
    return None


def file_digest(path: Path) -> str:
    """blake2b (128 bits) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _example_labels(examples: list) -> set[str]:
    if examples and isinstance(examples[0], TaggingExample):
        return {t for ex in examples for t in (ex.tags or ())}
    return {str(ex.label) for ex in examples if ex.label is not None}


class Task:
    """A :class:`TaskSpec` bound to a data directory; loads splits on demand (cached)."""

    def __init__(self, spec: TaskSpec, data_dir: Path | None = None, args: dict | None = None,
                 encoding: str | None = None):
        self.spec = spec
        self.data_dir = data_dir
        self.encoding = encoding  # None: the readers' default (UTF-8)
        self.args = args or {"name": spec.name}  # get_task(**args) recreates the task (run.json)
        self._cache: dict[str, list] = {}
        self._labels: tuple[str, ...] | None = spec.labels

    name = property(lambda self: self.spec.name)
    type = property(lambda self: self.spec.type)
    metric = property(lambda self: self.spec.metric)
    eval_split = property(lambda self: self.spec.eval_split)
    description = property(lambda self: self.spec.description)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, type={self.type!r}, metric={self.metric!r})"

    @property
    def labels(self) -> tuple[str, ...]:
        """Ordered label names (derived from the train split, sorted, when the spec has none)."""
        if self._labels is None:
            labels = _example_labels(self.load("train"))
            if not labels:
                raise DataError(f"{self.source('train')}: no labels in the train split")
            self._labels = _natural_sorted(labels)
        return self._labels

    def path(self, split: str) -> Path:
        """The file holding ``split`` (``DataError`` when the task has no such split)."""
        self._check_split(split)
        path = Path(self.spec.files[split])
        return path if self.data_dir is None or path.is_absolute() else self.data_dir / path

    def source(self, split: str) -> str:
        """Where ``split`` comes from, for messages."""
        return str(self.path(split))

    def has_split(self, split: str) -> bool:
        return split in self.spec.files

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")
        if not self.has_split(split):
            reason = self.spec.unavailable.get(split)
            raise DataError(reason or f"task {self.name!r} has no {split} split "
                                      f"(available: {', '.join(self.spec.files) or 'none'})")

    def load(self, split: str) -> list:
        """Examples of ``split`` (read once, then cached; do not mutate the returned list)."""
        if split not in self._cache:
            self._check_split(split)
            self._cache[split] = self._read(split)
        return self._cache[split]

    def _read(self, split: str) -> list:
        return self.spec.reader(self.path(split), **({"encoding": self.encoding} if self.encoding else {}))

    def input_kind(self) -> str | None:
        """``"single"`` or ``"pair"`` for a sequence task whose train split has only single texts or only
        pairs (what a served model may be asked), else None."""
        if self.type != "sequence":
            return None
        pairs = {ex.text_pair is not None for ex in self.load("train")}
        return {frozenset({False}): "single", frozenset({True}): "pair"}.get(frozenset(pairs))

    def data_fingerprint(self) -> dict:
        """What the task's data is, so that a resumed run can tell it changed: a hash of each split's file."""
        splits = {}
        for split in SPLITS:
            if self.has_split(split):
                path = self.path(split)
                splits[split] = ({"file": str(path), "bytes": path.stat().st_size, "blake2b": file_digest(path)}
                                 if path.is_file() else {"file": str(path), "missing": True})
        return {"hashed": "blake2b-128 of each split file's bytes", "splits": splits}


# ----------------------------------------------------------------------------- hub

_HUB_ALIASES = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}
_HUB_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}
_PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                 ("premise", "hypothesis"))
_TEXT_COLUMNS = ("sentence", "text", "content", "review", "document")


def _hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached within 3 s."""
    from .hub import hub_offline

    return hub_offline(timeout=3)


@contextlib.contextmanager
def _offline_mode(offline: bool):
    """Force the hub libraries' offline flag (read at their import time) for one call."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


class HubTask(Task):
    """A sequence task read from a Hugging Face hub dataset, fetched on first use."""

    def __init__(self, name: str, text_column=None, text_pair_column=None, label_column=None):
        repo, _, config = name.partition(":")
        owner, _, rest = repo.partition("/")
        if owner in _HUB_ALIASES and not config:
            repo, config = _HUB_ALIASES[owner], rest
        self.repo, self.config = repo, config or None
        metric = "mcc" if (self.config or repo).endswith("cola") else "accuracy"
        spec = TaskSpec(name, "sequence", metric, {}, None,
                        description=f"Hugging Face hub dataset {repo}" + (f" ({config})" if config else ""))
        args = {"name": name, "text_column": text_column, "text_pair_column": text_pair_column,
                "label_column": label_column}
        super().__init__(spec, None, {k: v for k, v in args.items() if v is not None})
        self._columns = (text_column, text_pair_column, label_column)
        self._dataset = None

    def _load_dataset(self):
        if self._dataset is None:
            try:
                import datasets
            except ImportError:
                raise DataError("hub tasks need the 'datasets' package: pip install 'maskfit[hub]'") from None
            try:
                with _offline_mode(_hub_offline()):
                    self._dataset = datasets.load_dataset(self.repo, self.config)
            except Exception as e:  # noqa: BLE001 - any failure to fetch is a data error here
                detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(f"could not fetch hub dataset {self.name!r} (offline?): {detail}") from None
        return self._dataset

    def _hub_split(self, split: str) -> str | None:
        names = self._load_dataset().keys()
        return next((s for s in _HUB_SPLITS.get(split, ()) if s in names), None)

    def has_split(self, split: str) -> bool:
        return self._hub_split(split) is not None

    def path(self, split: str) -> Path:
        raise DataError(f"hub task {self.name!r} has no local files")

    def source(self, split: str) -> str:
        return f"{self.name} [{self._hub_split(split) or split}]"

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")
        if not self.has_split(split):
            raise DataError(f"hub dataset {self.name!r} has no {split} split "
                            f"(has: {', '.join(self._load_dataset().keys())})")

    def _resolve_columns(self, columns) -> tuple[str, str | None, str | None]:
        text, pair, label = self._columns
        if text is None:
            found = next((p for p in _PAIR_COLUMNS if set(p) <= set(columns)), None)
            if found:
                text, pair = found
            else:
                text = next((c for c in _TEXT_COLUMNS if c in columns), None)
        if label is None and "label" in columns:
            label = "label"
        if text is None or label is None:
            raise DataError(f"hub dataset {self.name!r}: cannot tell text/label columns from "
                            f"{', '.join(columns)}; pass --text-column/--label-column")
        for col in (text, pair, label):
            if col is not None and col not in columns:
                raise DataError(f"hub dataset {self.name!r}: no column {col!r} (has: {', '.join(columns)})")
        return text, pair, label

    @property
    def labels(self) -> tuple[str, ...]:
        if self._labels is None:
            ds = self._load_dataset()[self._hub_split("train") or next(iter(self._load_dataset()))]
            names = getattr(ds.features[self._resolve_columns(ds.column_names)[2]], "names", None)
            self._labels = tuple(names) if names else super().labels
        return self._labels

    def data_fingerprint(self) -> dict:
        splits = {}
        for split in SPLITS:
            if self.has_split(split):
                ds = self._load_dataset()[self._hub_split(split)]
                splits[split] = {"file": self.source(split), "blake2b": getattr(ds, "_fingerprint", None)}
        return {"hashed": "the datasets library's fingerprint of each split", "splits": splits}

    def _read(self, split: str) -> list:
        ds = self._load_dataset()[self._hub_split(split)]
        text, pair, label = self._resolve_columns(ds.column_names)
        names = getattr(ds.features[label], "names", None)

        def name(value):
            if value is None or value == -1:
                return None
            return names[value] if names else str(value)

        pairs = list(ds[pair]) if pair else [None] * len(ds)
        examples = [SequenceExample(t, p, name(y)) for t, p, y in zip(ds[text], pairs, ds[label])]
        if not examples:
            raise DataError(f"{self.source(split)}: no rows")
        return examples


# -------------------------------------------------------------------------- lookup


def _custom_task(fmt, path, dev, test, text_column, text_pair_column, label_column, encoding) -> Task:
    name = f"{fmt}:{path}"
    if not text_column or not label_column:
        raise DataError(f"custom task {name!r} needs text_column and label_column "
                        f"(--text-column / --label-column)")
    files = {split: str(Path(p).expanduser().resolve()) for split, p in
             (("train", path), ("dev", dev), ("test", test)) if p}
    if not Path(files["train"]).is_file():
        raise DataError(f"{files['train']}: file not found")
    reader = partial(readers.read_table, text_column=text_column, label_column=label_column,
                     text_pair_column=text_pair_column, fmt=fmt)
    eval_split = "dev" if dev else "test" if test else "dev"
    spec = TaskSpec(name, "sequence", "accuracy", files, reader, eval_split=eval_split,
                    description=f"custom {fmt} task from {files['train']}")
    args = {"name": f"{fmt}:{files['train']}", "dev": files.get("dev"), "test": files.get("test"),
            "text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column,
            "encoding": encoding}
    return Task(spec, None, {k: v for k, v in args.items() if v is not None}, encoding)


def get_task(name: str, data_dir: str | Path | None = None, dev: str | None = None, test: str | None = None,
             text_column: str | None = None, text_pair_column: str | None = None,
             label_column: str | None = None, encoding: str | None = None) -> Task:
    """Resolve a task name (built-in, ``csv:/tsv:/jsonl:PATH`` or hub ``a/b``) to a :class:`Task`.

    ``encoding`` is the text encoding of the task's files (default UTF-8)."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"a task name must be a non-empty string, got {name!r}")
    if encoding is not None:
        readers.check_encoding(encoding)
    fmt, sep, path = name.partition(":")
    if sep and fmt in _CUSTOM_FORMATS:
        return _custom_task(fmt, path, dev, test, text_column, text_pair_column, label_column, encoding)
    if "/" in name:
        if encoding is not None:
            raise DataError(f"--encoding applies to files, not to the hub dataset {name!r}")
        return HubTask(name, text_column, text_pair_column, label_column)
    key = name.lower().replace("_", "-")
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, "
                        f"or csv:/tsv:/jsonl:PATH, or a hub dataset like glue/sst2")
    extra = {"dev": dev, "test": test, "text_column": text_column,
             "text_pair_column": text_pair_column, "label_column": label_column}
    given = [k for k, v in extra.items() if v is not None]
    if given:
        raise DataError(f"{', '.join(given)} only apply to custom csv:/tsv:/jsonl: tasks, not {key!r}")
    args = {"name": key, **({"encoding": encoding} if encoding is not None else {})}
    return Task(TASKS[key], resolve_data_dir(data_dir), args, encoding)


def _labelled(task: Task, split: str) -> list:
    """The examples of ``split``; ``DataError`` when there are none or one lacks its label."""
    examples = task.load(split)
    if not examples:
        raise DataError(f"{task.source(split)}: no examples")
    for i, ex in enumerate(examples, 1):
        if (ex.tags if isinstance(ex, TaggingExample) else ex.label) is None:
            raise DataError(f"{task.source(split)}: example {i} has no label")
    return examples


def check_labels(task: Task) -> tuple[str, ...]:
    """Validate the train and eval splits before training; return the task's labels.

    Raises ``DataError`` for an empty or unavailable train split, unlabelled examples, a
    train label outside a fixed label list, an eval-split label that train lacks, a train
    split with a single class (a classifier would learn nothing and score a meaningless
    100%), or two labels that are one number written two ways (``0`` and ``0.0``: they
    would be different classes).
    """
    train = _labelled(task, "train")
    labels = task.labels
    choice = isinstance(train[0], ChoiceExample)
    seen = set() if choice else _example_labels(train)
    for label in sorted(seen - set(labels)):
        raise DataError(f"{task.source('train')}: label {label!r} is not a label of task "
                        f"{task.name!r} ({', '.join(labels)})")
    twins = _same_number(seen)
    if twins:
        raise DataError(f"{task.source('train')}: labels {twins[0]!r} and {twins[1]!r} are the same number written "
                        "two ways, so they would be two different classes; write every label the same way")
    if not choice and len(seen) == 1:
        kind = "tag" if isinstance(train[0], TaggingExample) else "label"
        raise DataError(f"{task.source('train')}: every training example has the {kind} {next(iter(seen))!r}; "
                        f"a classifier needs at least two classes to learn anything")
    split = task.eval_split
    if split != "train" and task.has_split(split):
        examples = _labelled(task, split)
        for label in sorted(set() if choice else _example_labels(examples) - seen):
            twin = next((s for s in seen if _number(s) is not None and _number(s) == _number(label)), None)
            hint = f" (train writes it {twin!r}: the same number written differently)" if twin else ""
            raise DataError(f"{task.source(split)}: label {label!r} does not occur in the train split "
                            f"({task.source('train')}){hint}")
    return labels
