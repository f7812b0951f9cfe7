"""One frozen base encoder in memory, N tasks as 1-bit mask files, answers for any of them.

``MultiTaskModel(base)`` loads the pretrained weights once, on ``device``.
``register(name, path)`` adds a task from a mask file (or a run directory holding
``task.masks``), read by :func:`maskfit.maskfile.read_maskfile` like every other mask file:
the file's base fingerprint must equal the loaded base's, and the task keeps only its
masks, **packed** (1 bit per masked weight, as named masks of the shared
:class:`~maskfit.MaskedLinear` layers) and its small random head. ``predict(name,
inputs)`` answers for sequence, tagging and choice tasks.

How a request gets its task's weights
-------------------------------------
There is one head model per task *type* (``sequence``, ``tagging``, ``choice``) and
their embeddings and encoder are the **same module objects** (so the same tensors):
the first type is built from the checkpoint, a later type is built once and its
embeddings / encoder / pooler are replaced by the shared ones (the duplicate is freed).
Every linear that some registered task masks becomes a :class:`~maskfit.MaskedLinear`
holding the pristine shared ``W`` (never written) and one named mask per task that
masks it; a *task switch* activates the task's mask in each layer and puts the task's
head tensors into its type model. A switch happens only when a request's task differs
from the active one. The strategies differ in what a switch does:

``"masked"``
    unpack the task's bits into bool masks (1 byte per weight, current task only);
    every forward computes ``W ⊙ M`` again (as :class:`maskfit.MaskedLinear` does),
    into one reused scratch tensor per weight shape. Cheapest switch, slowest forward,
    almost no extra fp32 memory.
``"merge"``
    unpack and write ``W ⊙ M`` into one merged fp32 buffer per masked layer (one
    working set, reused for every task); forwards run plain linears. Extra memory:
    one fp32 copy of the masked weights.
``"cache"`` (default)
    like ``"merge"``, but keep the merged weights of recently used tasks (LRU) under
    ``cache_budget_bytes``; switching to a cached task only re-points the layers (no
    arithmetic). A miss evicts least recently used tasks and reuses their buffers; at
    least one set always exists, so a budget smaller than one task behaves as
    ``"merge"``.

All three compute exactly the same numbers as the single-task model on the same device
(:func:`maskfit.load_task_model` + :func:`maskfit.engine.predict_outputs` on the same
batches): the masked weight is the same ``W * M`` elementwise product (bitwise equal,
including the sign of zeros), the same fp32 kernels run on it, and the head tensors are
the file's. Precision is fp32 in eval mode; bf16 is **not** offered because it would
change the answers (reduced-precision matmuls), which breaks that contract. On a GPU
the packed masks, the unpacking and the merged weights all live on the GPU.

Threads: one lock serialises *switch + forward*; tokenisation has its own lock (the
fast tokenizers are not safe to call from several threads at once), so a request can
tokenise while another one runs the model.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MaskfileError, MaskfitError
from ..masking import MaskedLinear
from ..tasktypes import InputError, TaskType, task_type

STRATEGIES = ("masked", "merge", "cache")
DEFAULT_STRATEGY = "cache"
DEFAULT_CACHE_BUDGET = 1 << 30
"""Default byte budget of merged weights kept by the ``cache`` strategy (1 GiB: 37
MiniLM tasks at 29 MB each, or 3 MPNet-base tasks at 285 MB each)."""

__all__ = ["DEFAULT_CACHE_BUDGET", "STRATEGIES", "InputError", "InputTooLongError", "MultiTaskModel",
           "UnknownTaskError"]


class InputTooLongError(MaskfitError, ValueError):
    """An input has more tokens than allowed and truncation is off."""


class UnknownTaskError(MaskfitError, LookupError):
    """No task of that name is registered."""

    def __str__(self) -> str:  # LookupError is fine, but be explicit: one plain line
        return str(self.args[0]) if self.args else ""


@dataclass
class _Task:
    name: str
    source: str
    meta: dict
    kind: TaskType
    labels: list[str] | None
    max_length: int | None
    layers: dict[str, MaskedLinear] = field(default_factory=dict)
    head: dict[str, nn.Parameter] = field(default_factory=dict)
    file_bytes: int = 0
    inputs: str | None = None
    """``"single"`` / ``"pair"``: what a sequence task was trained on (None: not recorded, both accepted)."""

    @property
    def type(self) -> str:
        return self.kind.name

    @property
    def pooling(self) -> str:
        return self.meta.get("pooling", "cls")

    @property
    def mask_bytes(self) -> int:
        return sum(m.packed(self.name).numel() for m in self.layers.values())

    @property
    def merged_bytes(self) -> int:
        return sum(m.weight.numel() * m.weight.element_size() for m in self.layers.values())

    def mask(self, layer: str) -> torch.Tensor:
        return self.layers[layer].mask(self.name)


CHARS_PER_TOKEN = 32
"""With truncation off, an input may have at most this many characters per token of the
limit (16,384 for 512 tokens), and a request this many per token of ``max_tokens``: real
text has 4-6 per token, and tokenising megabytes of text takes seconds, under a lock that
every other request waits for."""


def _characters(ex) -> tuple[int, int]:
    """(characters of the example's longest sequence, characters the tokenizer reads for all of it):
    a choice context is read once per choice."""
    if hasattr(ex, "choices"):
        longest = len(ex.context) + max(map(len, ex.choices), default=0)
        return longest, len(ex.choices) * len(ex.context) + sum(map(len, ex.choices))
    n = sum(map(len, ex.words)) + len(ex.words) if hasattr(ex, "words") else len(ex.text) + len(ex.text_pair or "")
    return n, n


def _check_characters(examples, limit: int, max_tokens: int | None) -> None:
    sizes = [_characters(ex) for ex in examples]
    for i, (longest, _) in enumerate(sizes):
        if longest > limit * CHARS_PER_TOKEN:
            raise InputTooLongError(f"input {i} has {longest} characters, more than {limit} tokens can hold "
                                    f"({CHARS_PER_TOKEN} per token); shorten it")
    total = sum(n for _, n in sizes)
    if max_tokens is not None and total > max_tokens * CHARS_PER_TOKEN:
        raise InputTooLongError(f"the inputs have {total} characters in all, more than {max_tokens} tokens "
                                f"can hold ({CHARS_PER_TOKEN} per token); send fewer or shorter inputs")


def padded_tokens(features, batch_size: int) -> int:
    """Tokens the model runs on for ``features`` in input order: per batch, rows (inputs, times the most
    choices) × the longest row. What bounds a request's work (one input with many choices pads every other)."""
    from ..data.encode import feature_length

    total = 0
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        choices = [len(f["input_ids"]) for f in chunk if f["input_ids"] and isinstance(f["input_ids"][0], list)]
        rows = len(chunk) * (max(choices) if choices else 1)
        total += rows * max(feature_length(f) for f in chunk)
    return total


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _get_module(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Same tensors under the same names (masks are not weights: state_dict leaves them out)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


class MultiTaskModel:
    """One base encoder, many tasks; see the module docstring for the strategies.

    Args:
        base_model_name: a name :func:`maskfit.resolve_model` knows (``minilm``,
            ``mpnet``, a local directory, a hub id).
        strategy: ``"cache"`` (default), ``"merge"`` or ``"masked"``.
        cache_budget_bytes: bytes of merged weights the ``cache`` strategy may
            keep (default :data:`DEFAULT_CACHE_BUDGET`).
        batch_size: :meth:`predict` runs the inputs in batches of this many, in order.
        config: a transformers config to build a randomly initialised base instead of
            loading weights (tests).
        device: where the base, the masks and the merged weights live (``auto``, ``cpu``,
            ``cuda``, ``cuda:N``, ``mps``; default: the CPU).
    """

    def __init__(self, base_model_name: str, strategy: str = DEFAULT_STRATEGY,
                 cache_budget_bytes: int | None = None, batch_size: int = 64, config=None, device="cpu"):
        from ..heads import build_model, load_tokenizer
        from ..maskfile import fingerprint
        from ..runtime import resolve_device

        if strategy not in STRATEGIES:
            raise MaskfitError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        self.base_model_name = base_model_name
        self.strategy = strategy
        self.cache_budget_bytes = DEFAULT_CACHE_BUDGET if cache_budget_bytes is None else int(cache_budget_bytes)
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self._config = config
        first = build_model(base_model_name, "sequence", ["0", "1"], config=config, device=self.device)
        first.eval().requires_grad_(False)
        self._models: dict[str, nn.Module] = {"sequence": first}
        self._shared = first.base_model
        self.fingerprint = fingerprint(first)
        self.tokenizer = load_tokenizer(base_model_name) if config is None else None
        self.max_length = self._model_limit()
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.RLock()
        self._tok_lock = threading.Lock()
        self._current: str | None = None
        self._active: list[MaskedLinear] = []
        self._buffers: dict[int, torch.Tensor] = {}  # merge: id(layer) -> working buffer
        self._scratch: dict[tuple, torch.Tensor] = {}  # masked: (shape, dtype) -> W ⊙ M scratch
        self._cache: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()  # cache: task -> merged set
        self.stats = {"switches": 0, "cache_hits": 0, "cache_misses": 0, "evictions": 0}

    # ------------------------------------------------------------------ setup

    def _model_limit(self) -> int:
        cfg = self._models["sequence"].config
        limit = 512
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 100_000:
            limit = min(limit, int(tok_max))
        pos = getattr(cfg, "max_position_embeddings", None)
        if pos:
            offset = 2 if cfg.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0
            limit = min(limit, int(pos) - offset)
        return limit

    @staticmethod
    def _key(task_type: str, pooling: str) -> str:
        """Tasks share one head model per task type and pooling (the pooling hooks live on it)."""
        return task_type if pooling == "cls" else f"{task_type}/{pooling}"

    def _type_model(self, task_type: str, labels, pooling: str = "cls") -> nn.Module:
        """The head model of ``task_type`` (and pooling), built on first use, sharing the base modules."""
        from ..heads import build_model, set_pooling

        key = self._key(task_type, pooling)
        model = self._models.get(key)
        if model is not None:
            return model
        # Pooling hooks go on once the shared encoder is in place (they hook the encoder).
        model = build_model(self.base_model_name, task_type, labels, config=self._config, device=self.device)
        model.eval().requires_grad_(False)
        base = model.base_model
        for name, child in list(base.named_children()):
            shared = getattr(self._shared, name, None)
            if child is None or shared is None or type(shared) is not type(child):
                if isinstance(child, nn.Module):
                    for other in self._models.values():  # e.g. MPNet's pooler: sequence lacks it, choice has it
                        cand = getattr(other.base_model, name, None)
                        if cand is not None and type(cand) is type(child) and _same_weights(cand, child):
                            setattr(base, name, cand)
                            break
                continue
            if _same_weights(shared, child):
                setattr(base, name, shared)
            elif name in ("embeddings", "encoder"):
                raise MaskfileError(f"the {task_type} head of '{self.base_model_name}' loads a different "
                                    f"{name} than the shared base; cannot share it")
        set_pooling(model, pooling)
        self._models[key] = model
        return model

    def _model_of(self, task: _Task) -> nn.Module:
        return self._models[self._key(task.type, task.pooling)]

    # ------------------------------------------------------------------ tasks

    def register(self, task_name: str, mask_file_or_run_dir, replace: bool = False) -> dict:
        """Add a task from a mask file or a run directory (``task.masks`` + ``run.json``).

        Refuses (:class:`maskfit.MaskfileError`) a file made for another base (its
        fingerprint differs), a corrupt file, or one whose layers do not fit. Returns
        the task's :meth:`tasks_info` entry.
        """
        from ..maskfile import check_base, read_maskfile

        if not isinstance(task_name, str) or not task_name.strip():
            raise MaskfitError("a task name must be a non-empty string")
        from ..hub import resolve_source
        from ..model import task_files

        path = resolve_source(mask_file_or_run_dir)  # a local path, or a hub repo holding one task
        run_info = {}
        if path.is_dir():
            from ..run import RUN_FILE, read_run_info

            if (path / RUN_FILE).is_file():
                run_info = read_run_info(path)  # checked: a corrupt run.json is a one-line RunError
            if run_info.get("method", "mask") != "mask":
                raise MaskfileError(f"{path} is a '{run_info.get('method')}' run: only mask runs "
                                    "(task.masks) can share a base in a MultiTaskModel")
            files = task_files(path)
            if len(files) != 1:
                raise MaskfileError(f"{path} holds {len(files)} tasks: register each file "
                                    f"({', '.join(f'{n}={f}' for n, f in files.items())})")
            path = next(iter(files.values()))
        mf = read_maskfile(path)
        check_base(self.fingerprint, mf.meta, path, have=self.base_model_name)
        kind, labels = task_type(mf.task_type), mf.labels
        extra = mf.meta.get("extra") if isinstance(mf.meta.get("extra"), dict) else {}
        text_kind = extra.get("inputs") or run_info.get("inputs")  # recorded by maskfit train; older files: None
        text_kind = text_kind if text_kind in ("single", "pair") else None

        with self._lock:
            if task_name in self._tasks and not replace:
                raise MaskfitError(f"task '{task_name}' is already registered")
            model = self._type_model(kind.name, labels, mf.pooling)
            if mf.meta.get("head_class") and mf.meta["head_class"] != type(model.model).__name__:
                raise MaskfileError(f"{path}: head class {mf.meta['head_class']} does not match this base's "
                                    f"{kind.name} head {type(model.model).__name__}")
            params = dict(model.model.named_parameters())
            head = {}
            for name, t in mf.head.items():
                have = params.get(name)  # a classifier's first dimension is the task's label count
                if have is None or have.dim() != t.dim() or have.shape[1:] != t.shape[1:] or have.dtype != t.dtype:
                    got = tuple(have.shape) if have is not None else "missing"
                    raise MaskfileError(f"{path}: head tensor {name} {tuple(t.shape)} does not fit the model ({got})")
                head[name] = nn.Parameter(t.to(self.device).clone(), requires_grad=False)  # own, aligned storage
            if kind.name in ("sequence", "tagging"):
                out = [t for n, t in head.items() if n.endswith("weight") and t.dim() == 2]
                if out and out[-1].shape[0] != len(labels):
                    raise MaskfileError(f"{path}: the head has {out[-1].shape[0]} outputs for {len(labels)} labels")
            plan = []
            for name, shape in mf.shapes.items():
                module = _get_module(model.model, name)
                if not isinstance(module, (nn.Linear, MaskedLinear)):
                    raise MaskfileError(f"{path}: layer {name} is not a linear layer of the {kind.name} model")
                weight = head.get(f"{name}.weight", module.weight)
                if tuple(weight.shape) != shape:
                    raise MaskfileError(f"{path}: mask of {name} has shape {list(shape)}, "
                                        f"the weight {list(weight.shape)}")
                plan.append((name, module, shape))
            if task_name in self._tasks:
                self._drop(task_name)
            task = _Task(name=task_name, source=str(path), meta=mf.meta, kind=kind, labels=labels,
                         max_length=run_info.get("max_length"), head=head, file_bytes=path.stat().st_size,
                         inputs=text_kind)
            for name, module, shape in plan:
                if not isinstance(module, MaskedLinear):
                    module = MaskedLinear.wrap(module)
                    _set_module(model.model, name, module)
                # own storage; a masked classifier's shape is its task's (label count)
                module.add_mask(task_name, packed=mf.packed[name].to(self.device).clone(), shape=shape)
                task.layers[name] = module
            del mf
            self._tasks[task_name] = task
            return self._info(task)

    def unregister(self, task_name: str) -> None:
        """Forget a task (its masks, head and cached merged weights)."""
        with self._lock:
            self._task(task_name)
            self._drop(task_name)

    def _drop(self, task_name: str) -> None:
        task = self._tasks.pop(task_name, None)
        self._cache.pop(task_name, None)
        if self._current == task_name:
            self._current = None
            for m in self._active:
                m.set_active(None)
            self._active = []
        if task is not None:
            for m in task.layers.values():
                m.remove_mask(task_name)

    def _task(self, name: str) -> _Task:
        try:
            return self._tasks[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTaskError(f"unknown task '{name}' (registered: {known})") from None

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def task_type(self, task_name: str) -> str:
        return self._task(task_name).type

    def _info(self, t: _Task) -> dict:
        return {
            "type": t.type,
            "labels": t.labels,
            "sparsity": t.meta.get("sparsity"),
            "base": t.meta.get("base_model"),
            "fingerprint": t.meta.get("fingerprint"),
            "masked_weights": t.meta.get("masked_weights"),
            "mask_bytes": t.mask_bytes,
            "head_params": sum(p.numel() for p in t.head.values()),
            "file_bytes": t.file_bytes,
            "max_length": t.max_length,
            "inputs": t.inputs,
            "source": t.source,
        }

    def tasks_info(self) -> dict[str, dict]:
        """Task name → type, labels, sparsity, base (name + fingerprint), sizes, source."""
        with self._lock:
            return {name: self._info(t) for name, t in self._tasks.items()}

    def info(self) -> dict:
        """The server-level summary: base, strategy, device, tasks, cache use, switch counts."""
        with self._lock:
            return {"base": self.base_model_name, "fingerprint": self.fingerprint, "strategy": self.strategy,
                    "device": str(self.device), "tasks": len(self._tasks), "active_task": self._current,
                    "max_length": self.max_length,
                    "cache_budget_bytes": self.cache_budget_bytes if self.strategy == "cache" else None,
                    "cache_tasks": list(self._cache), "cache_bytes": self._cache_bytes(), **self.stats}

    # ------------------------------------------------------------------ switching

    def set_strategy(self, strategy: str, cache_budget_bytes: int | None = None) -> None:
        """Change the strategy in place (drops merged weights; the next request re-switches)."""
        if strategy not in STRATEGIES:
            raise MaskfitError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        with self._lock:
            for task in self._tasks.values():
                for m in task.layers.values():
                    m.set_active(None)
                    m.scratch = None
            self._active, self._current = [], None
            self._buffers.clear()
            self._scratch.clear()
            self._cache.clear()
            self.strategy = strategy
            if cache_budget_bytes is not None:
                self.cache_budget_bytes = int(cache_budget_bytes)

    def _cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._cache.values() for t in s.values())

    def switch(self, task_name: str) -> None:
        """Make ``task_name`` the active task (a no-op when it already is)."""
        with self._lock, torch.no_grad():
            self._switch(self._task(task_name))

    def _switch(self, task: _Task) -> None:
        if self._current == task.name:
            return
        model = self._model_of(task).model
        for pname, p in task.head.items():  # head first: a masked classifier's W is the head's
            owner, _, leaf = pname.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, p)
        now = set(map(id, task.layers.values()))
        for m in self._active:
            if id(m) not in now:
                m.set_active(None)
        if self.strategy == "masked":
            for m in task.layers.values():
                key = (tuple(m.weight.shape), m.weight.dtype)
                if key not in self._scratch:  # one per shape: layers run one after the other
                    self._scratch[key] = torch.empty_like(m.weight, memory_format=torch.contiguous_format)
                m.set_active(task.name)
                if m.scratch is not self._scratch[key]:
                    m.scratch = self._scratch[key]
        elif self.strategy == "merge":
            for m in task.layers.values():
                buf = self._buffers.get(id(m))
                if buf is None or buf.shape != m.weight.shape:  # a classifier's shape follows its task
                    buf = self._buffers[id(m)] = torch.empty_like(m.weight, memory_format=torch.contiguous_format)
                m.set_active(task.name, unpack=False)
                m.merge(out=buf)
        else:
            merged = self._cache.get(task.name)
            if merged is not None:
                self._cache.move_to_end(task.name)
                self.stats["cache_hits"] += 1
                for m in task.layers.values():
                    m.use_merged(task.name, merged[id(m)])
            else:
                self._merge_into_cache(task)
        self._active = list(task.layers.values())
        self._current = task.name
        self.stats["switches"] += 1

    def _merge_into_cache(self, task: _Task) -> None:
        self.stats["cache_misses"] += 1
        need = task.merged_bytes
        free: dict[tuple, list[torch.Tensor]] = {}
        while self._cache and self._cache_bytes() + need > self.cache_budget_bytes:
            _, old = self._cache.popitem(last=False)
            self.stats["evictions"] += 1
            for t in old.values():
                free.setdefault((tuple(t.shape), t.dtype), []).append(t)
        merged = {}
        for m in task.layers.values():
            pool = free.get((tuple(m.weight.shape), m.weight.dtype))
            buf = pool.pop() if pool else torch.empty_like(m.weight, memory_format=torch.contiguous_format)
            m.set_active(task.name, unpack=False)
            merged[id(m)] = m.merge(out=buf)
        self._cache[task.name] = merged

    # ------------------------------------------------------------------ inference

    def encode(self, task_name: str, inputs, max_length: int | None = None, truncate: bool = True,
               max_tokens: int | None = None):
        """(examples, features) for ``inputs``; see :meth:`predict` for the length rules."""
        from ..data.encode import feature_length

        if self.tokenizer is None:
            raise MaskfitError("this MultiTaskModel has no tokenizer (built from a config)")
        task = self._task(task_name)
        examples = task.kind.parse(inputs, task.inputs)
        limit = int(max_length or task.max_length or self.max_length)
        limit = min(limit, self.max_length)
        if not truncate:  # refuse what cannot fit before the tokenizer spends time on it (it holds a lock)
            _check_characters(examples, limit, max_tokens)
        with self._tok_lock:
            try:
                feats = task.kind.encode(examples, self.tokenizer, task.labels, limit if truncate else limit + 1)
            except (MaskfitError, ValueError, TypeError) as e:
                raise InputError(str(e).splitlines()[0]) from None
        if not truncate:
            for i, f in enumerate(feats):
                if feature_length(f) > limit:
                    raise InputTooLongError(f"input {i} has more than {limit} tokens (the limit); "
                                            "shorten it or allow truncation")
        if max_tokens is not None:
            work = padded_tokens(feats, self.batch_size)
            if work > max_tokens:
                raise InputTooLongError(f"the inputs need {work} tokens in all (padded in batches of "
                                        f"{self.batch_size}), over the limit of {max_tokens} per request; "
                                        "send fewer or shorter inputs")
        return examples, feats

    def logits(self, task_name: str, batch: dict) -> torch.Tensor:
        """Logits of an already collated batch (:func:`maskfit.data.collate`, on this model's device).

        For callers that batch requests themselves: switches to the task if needed and runs
        the forward, both under the model lock.
        """
        with self._lock, torch.no_grad():
            task = self._task(task_name)
            self._switch(task)
            return task.kind.logits(self._model_of(task), batch)

    def outputs(self, task_name: str, inputs, max_length: int | None = None, truncate: bool = True,
                max_tokens: int | None = None) -> list:
        """Each input's output (its logits, see :mod:`maskfit.tasktypes`), in input order."""
        return self._run(task_name, inputs, max_length, truncate, max_tokens)[1]

    def _run(self, task_name, inputs, max_length, truncate, max_tokens=None):
        from ..engine import predict_outputs

        examples, feats = self.encode(task_name, inputs, max_length, truncate, max_tokens)
        with self._lock, torch.no_grad():
            task = self._task(task_name)
            self._switch(task)
            pairs = predict_outputs(self._model_of(task), task.kind, feats, self.tokenizer.pad_token_id, task.labels,
                                    self.batch_size, self.device, "fp32", order="input")
        return examples, [o for _, o in pairs]

    def predict(self, task_name: str, inputs, max_length: int | None = None, truncate: bool = True,
                max_tokens: int | None = None) -> list[dict]:
        """Answers for ``inputs`` of task ``task_name``, one dict per input.

        * sequence (``"text"`` or ``[text, text_pair]``): ``{"label", "probabilities":
          {label: p}}``;
        * tagging (a list of words, or a string split on whitespace): ``{"words",
          "tags"}``, one tag per word (a word lost to truncation gets ``"O"``, or the
          first label when there is no ``"O"``);
        * choice (``{"context", "choices"}``): ``{"choice": index, "probabilities"}``.

        Length: at most ``max_length`` tokens (default: the task's training
        ``max_length`` from ``run.json`` when registered from a run directory, else
        the model's limit, 512 for BERT / MPNet). Longer inputs are truncated, or,
        with ``truncate=False``, refused with :class:`InputTooLongError` (and so is an input
        of more than :data:`CHARS_PER_TOKEN` characters per allowed token, before it is
        tokenised). ``max_tokens`` bounds a call's work: the tokens its padded batches
        hold (:func:`padded_tokens`; more → :class:`InputTooLongError`). A sequence task
        trained on single texts refuses pairs and the other way round (:class:`InputError`).
        Inputs are run in order, in batches of :attr:`batch_size`, and the answers equal
        the single-task model's on the same batches exactly.
        """
        task = self._task(task_name)
        examples, outputs = self._run(task_name, inputs, max_length, truncate, max_tokens)
        return [task.kind.answer(o, task.labels, ex) for o, ex in zip(outputs, examples)]

    def resident_bytes(self) -> dict:
        """Bytes held: shared base tensors, packed masks + heads of all tasks, merged weights."""
        seen, base = set(), 0
        for model in self._models.values():
            tensors = list(model.parameters()) + [b for n, b in model.named_buffers()
                                                  if "._packed_" not in n and not n.endswith("fixed_mask")]
            for t in tensors:
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    base += t.numel() * t.element_size()
        masks = sum(t.mask_bytes for t in self._tasks.values())
        heads = sum(p.numel() * p.element_size() for t in self._tasks.values() for p in t.head.values())
        merged = sum(b.numel() * b.element_size() for b in [*self._buffers.values(), *self._scratch.values()])
        merged += self._cache_bytes()
        return {"base": base, "masks": masks, "heads": heads, "merged": merged}
