"""MaskfitModel: a pretrained encoder with a task head, the named task masks it holds, and their files.

The peft-shaped surface (``PeftModel`` ↔ ``MaskfitModel``, adapter ↔ task):

    model = MaskfitModel.from_pretrained("minilm", "masks/mrpc")   # base by name, a file, folder or hub repo
    model.add_task("qqp", "masks/qqp.masks")                       # another mask (+ its head) on the same base
    model.set_task("qqp")                                          # answer for qqp from now on
    model.save_pretrained("my-tasks")                              # maskfit_config.json + one .masks per task
    model.push_to_hub("me/my-tasks")                               # the same folder on the hub
    plain = model.merge_and_unload()                               # a transformers model computing W ⊙ M

A *task* is one named mask plus its head: the randomly initialised, never trained pooler and
classifier tensors its mask file stores (a classifier's shape follows the task's labels, as
peft's ``modules_to_save`` keep one copy per adapter). All tasks of one model share its
encoder weights and its task type and pooling; tasks of several types are served together
by :class:`maskfit.serve.multitask.MultiTaskModel`.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from torch import nn

from .errors import MaskfileError
from .masking import MaskConfig, mask_names, set_active_mask
from .masking.apply import _set, masked_layers
from .masking.layer import DEFAULT, MaskedLinear
from .tasktypes import TaskType, task_type

CONFIG_NAME = "maskfit_config.json"
"""The index ``save_pretrained`` writes next to the task files: base, fingerprint, task type, tasks."""
CONFIG_FORMAT = "maskfit.pretrained"
CONFIG_VERSION = 1
TASK_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,127}$")
"""Task names become file names (``<task>.masks``)."""


class MaskfitModel(nn.Module):
    """A transformers task model plus what maskfit needs to know about it.

    ``base`` is the name the pretrained encoder was loaded by (``minilm``, a folder, a hub
    id), ``task_type`` / ``labels`` / ``pooling`` describe the head, and ``mask_configs``
    holds the :class:`~maskfit.MaskConfig` of each named mask the model carries. These
    live here, on one small wrapper, instead of as attributes set on transformers
    modules. The wrapper forwards like the model it holds and looks up every attribute it
    does not have there (as peft's ``PeftModel`` does), so ``model(**batch).logits``,
    ``model.config`` and ``model.bert`` work; ``get_base_model()`` returns the
    transformers model, whose parameter names are the ones mask files use.
    """

    def __init__(self, model: nn.Module, base: str, task_type: str, labels=None, pooling: str = "cls",
                 pooler_copied: bool = False):
        super().__init__()
        self.model = model
        self.base = base
        self.task_type = task_type
        self.labels = list(labels) if labels is not None else None
        self.pooling = pooling
        self.pooler_copied = pooler_copied
        """The pre-classifier was started from the checkpoint's pooler (RoBERTa/MPNet), so a
        mask file need not store it."""
        self.mask_configs: dict[str, MaskConfig] = {}
        self.heads: dict[str, dict[str, nn.Parameter]] = {}
        """Task → its head parameters (the active task's are the ones in the model)."""
        self.task_labels: dict[str, list | None] = {}
        self.task_extra: dict[str, dict] = {}
        """Task → the ``extra`` metadata its mask file carried (what ``maskfit train`` recorded)."""

    # Trainer reads the forward's signature: the columns it keeps, the label names ("labels"), and
    # whether the model scales the loss itself (it does not: Trainer divides by accumulation steps).
    accepts_loss_kwargs = False

    def get_base_model(self) -> nn.Module:
        return self.model

    @property
    def kind(self) -> TaskType:
        """The :class:`~maskfit.tasktypes.TaskType` of the head."""
        return task_type(self.task_type)

    @property
    def masks(self) -> list[str]:
        """Names of the masks the model holds."""
        return mask_names(self.model)

    @property
    def active_mask(self) -> str | None:
        active = {m.active for m in masked_layers(self.model).values()} - {None}
        return next(iter(active)) if len(active) == 1 else None

    def set_mask(self, name: str | None) -> "MaskfitModel":
        """Compute with mask ``name`` from now on (``None``: the unmasked pretrained weights), and its head."""
        if name is not None and name not in self.masks:
            raise KeyError(f"no mask '{name}' (has: {', '.join(self.masks) or 'none'})")
        if name is not None:
            self._put_head(name)
        set_active_mask(self.model, name)
        return self

    # ------------------------------------------------------------------ tasks (peft: adapters)

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks (masks) the model holds."""
        return self.masks

    @property
    def active_task(self) -> str | None:
        return self.active_mask

    def set_task(self, name: str) -> "MaskfitModel":
        """Answer for task ``name`` from now on: its mask and its head (peft's ``set_adapter``)."""
        return self.set_mask(name)

    def _snapshot_heads(self) -> None:
        """Tasks without a stored head own the head in the model now (set up by build_model / mask_model)."""
        from .heads import random_head_parameters

        for name in self.masks:
            if name not in self.heads:
                self.heads[name] = dict(random_head_parameters(self))
                self.task_labels.setdefault(name, self.labels)

    def _put_head(self, name: str) -> None:
        """Put task ``name``'s head parameters into the model (a masked classifier's weight included)."""
        self._snapshot_heads()
        head = self.heads[name]
        for pname, p in head.items():
            owner, _, leaf = pname.rpartition(".")
            module = self.model.get_submodule(owner) if owner else self.model
            live = module._parameters.get(leaf)
            if live is p:
                continue
            if live is not None and (p.device, p.dtype) != (live.device, live.dtype):
                # stored heads are not submodules: follow the model's .to(device / dtype) here
                p = head[pname] = nn.Parameter(p.detach().to(live.device, live.dtype), requires_grad=p.requires_grad)
            setattr(module, leaf, p)
        labels = self.task_labels.get(name)
        self.labels = labels
        if labels is not None:  # so pipelines and model.config name this task's labels
            cfg = self.model.config
            cfg.num_labels = len(labels)
            cfg.id2label, cfg.label2id = dict(enumerate(labels)), {l: i for i, l in enumerate(labels)}

    def add_task(self, name: str, source, *, revision: str | None = None, token: str | None = None) -> "MaskfitModel":
        """Add task ``name`` from a mask file, a run folder or a one-task ``save_pretrained`` folder
        (local, or a hub repo id), without changing the active task (peft's ``load_adapter``).

        The file must belong to this base (same fingerprint) and to this model's task type and
        pooling; every refusal is a one-line :class:`~maskfit.MaskfileError`.
        """
        from .hub import resolve_source

        files = task_files(resolve_source(source, revision, token))
        if len(files) != 1:
            raise MaskfileError(f"{source} holds {len(files)} tasks ({', '.join(files)}): add them with "
                                "from_pretrained(model, folder), or name one file")
        self._add_file(name, next(iter(files.values())))
        return self

    def _add_file(self, name: str, path: Path) -> None:
        from .maskfile import check_base, read_maskfile

        _check_task_name(name)
        if name in self.masks:
            raise MaskfileError(f"the model already has a task named '{name}'")
        mf = read_maskfile(path)
        check_base(self, mf.meta, mf.path)
        if mf.task_type != self.task_type or mf.pooling != self.pooling:
            raise MaskfileError(
                f"{mf.path} is a {mf.task_type} task with {mf.pooling} pooling; this model has a {self.task_type} head "
                f"with {self.pooling} pooling: load it on its own (AutoMaskfitModel.from_pretrained) or serve both "
                "(maskfit serve)")
        self._snapshot_heads()
        live = self.heads[self.active_task] if self.active_task in self.heads else {}
        head = {}
        for pname, t in mf.head.items():
            have = live.get(pname) if live else dict(self.model.named_parameters()).get(pname)
            if have is None or have.dim() != t.dim() or have.shape[1:] != t.shape[1:]:
                got = tuple(have.shape) if have is not None else "missing"
                raise MaskfileError(f"{mf.path}: head tensor {pname} {tuple(t.shape)} does not fit the model ({got})")
            head[pname] = nn.Parameter(t.to(have.device, have.dtype).clone(), requires_grad=False)  # as the model is
        layers = masked_layers(self.model)
        device = next(self.model.parameters()).device
        for lname, shape in mf.shapes.items():
            module = self.model.get_submodule(lname) if _has_module(self.model, lname) else None
            if not isinstance(module, nn.Linear) and lname not in layers:
                raise MaskfileError(f"{mf.path}: layer {lname} is not a linear layer of this model")
            weight = head.get(f"{lname}.weight", module.weight)
            if tuple(weight.shape) != shape:
                raise MaskfileError(f"{mf.path}: mask of {lname} has shape {list(shape)}, the weight {list(weight.shape)}")
        for lname, shape in mf.shapes.items():
            module = layers.get(lname) or self.model.get_submodule(lname)
            if not isinstance(module, MaskedLinear):
                module = MaskedLinear.wrap(module, mf.config.threshold)
                _set(self.model, lname, module)
            module.add_mask(name, packed=mf.packed[lname].to(device), shape=shape)
        self.heads[name] = head
        self.task_labels[name] = mf.labels
        self.task_extra[name] = mf.meta.get("extra") if isinstance(mf.meta.get("extra"), dict) else {}
        self.mask_configs[name] = mf.config

    def delete_task(self, name: str) -> None:
        """Forget task ``name`` (its mask in every layer and its head); the active task cannot be deleted."""
        if name not in self.masks:
            raise KeyError(f"no task '{name}' (has: {', '.join(self.masks) or 'none'})")
        if name == self.active_task:
            raise MaskfileError(f"task '{name}' is active: set_task another one first")
        self._snapshot_heads()
        for layer in masked_layers(self.model).values():
            if name in layer.mask_names:
                layer.remove_mask(name)
        for d in (self.heads, self.task_labels, self.task_extra, self.mask_configs):
            d.pop(name, None)

    # ------------------------------------------------------------------ files (peft: save/from_pretrained)

    def save_pretrained(self, save_directory, tasks: list[str] | None = None, is_main_process: bool = True) -> Path:
        """Write ``maskfit_config.json`` and one mask file per task (default: every task) into ``save_directory``.

        Each ``<task>.masks`` is a complete mask file (:mod:`maskfit.maskfile`: masks, head, labels,
        config, base fingerprint); the config file, written last, lists them and the active task.
        Only the main process writes (``is_main_process``, as in transformers and peft).
        """
        from .maskfile import fingerprint, save_masks
        from .run import atomic_write_json

        out = Path(save_directory)
        if not is_main_process:
            return out
        names = list(tasks) if tasks is not None else self.tasks
        if not names:
            raise MaskfileError("the model holds no task masks: call mask_model or add_task first")
        unknown = [n for n in names if n not in self.masks]
        if unknown:
            raise MaskfileError(f"no task named {', '.join(map(repr, unknown))} (has: {', '.join(self.masks)})")
        for n in names:
            _check_task_name(n)
        out.mkdir(parents=True, exist_ok=True)
        active = self.active_task
        try:
            for n in names:
                self.set_task(n)
                extra = {**self.task_extra.get(n, {}), "task": {**(self.task_extra.get(n, {}).get("task") or {}),
                                                                "name": n}}
                save_masks(self, out / f"{n}.masks", labels=self.task_labels.get(n), extra=extra)
        finally:
            self.set_mask(active)
        index = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "base_model": self.base,
                 "fingerprint": fingerprint(self), "task_type": self.task_type, "pooling": self.pooling,
                 "tasks": {n: f"{n}.masks" for n in names}, "active_task": active if active in names else names[0]}
        atomic_write_json(out / CONFIG_NAME, index)
        return out

    @classmethod
    def from_pretrained(cls, base, source, task: str | None = None, *, device=None, revision: str | None = None,
                        token: str | None = None) -> "MaskfitModel":
        """A model answering for the task(s) in ``source``, on base ``base``.

        ``source``: a mask file, a run folder (``task.masks``), a ``save_pretrained`` folder (every
        task it lists, its active task active) or a hub repo id holding one. ``base``: a model
        name or folder (``None``: the one the file names) to build the right head on, or a
        :class:`MaskfitModel` to add the tasks to. ``task`` names a single file's task (default:
        ``"default"``) or picks one task of a folder. Returns the model in eval mode.
        """
        from .heads import build_model
        from .hub import resolve_source
        from .maskfile import apply_maskfile, check_base, read_maskfile

        path = resolve_source(source, revision, token)
        files = task_files(path)
        active = _index(path).get("active_task") if path.is_dir() else None
        if task is not None and path.is_dir() and len(files) > 1:
            if task not in files:
                raise MaskfileError(f"{path} has no task '{task}' (has: {', '.join(files)})")
            files, active = {task: files[task]}, task
        elif task is not None:
            files = {task: next(iter(files.values()))}
        names = list(files)
        if isinstance(base, MaskfitModel):
            model = base
            for n in names:
                model._add_file(n, files[n])
        else:
            first = read_maskfile(files[names[0]])
            _check_task_name(names[0])
            model = build_model(base if base is not None else first.meta["base_model"], first.task_type,
                                first.labels, pooling=first.pooling, device=device)
            check_base(model, first.meta, first.path)
            apply_maskfile(model, first, names[0])
            model.task_labels[names[0]] = first.labels
            model.task_extra[names[0]] = first.meta.get("extra") if isinstance(first.meta.get("extra"), dict) else {}
            model._snapshot_heads()
            for n in names[1:]:
                model._add_file(n, files[n])
        model.set_task(active if active in names else names[0])
        return model.eval()

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    commit_message: str | None = None, revision: str | None = None,
                    tasks: list[str] | None = None) -> str:
        """``save_pretrained`` into a temporary folder and upload it to hub repo ``repo_id`` (created if
        missing); returns the commit URL. Offline: a one-line :class:`~maskfit.MaskfileError` within a second."""
        from .hub import hub_offline, push_folder, REPO_ID

        if not REPO_ID.match(str(repo_id)):
            raise MaskfileError(f"'{repo_id}' is not a hub repo id (owner/name)")
        if hub_offline():
            raise MaskfileError(f"cannot push to '{repo_id}': the Hugging Face Hub cannot be reached "
                                "(offline, or HF_HUB_OFFLINE is set)")
        with tempfile.TemporaryDirectory(prefix="maskfit-push-") as tmp:
            self.save_pretrained(tmp, tasks=tasks)
            return push_folder(Path(tmp), repo_id, token=token, private=private, commit_message=commit_message,
                               revision=revision)

    # ------------------------------------------------------------------ merging (peft: merge_and_unload)

    def merge_and_unload(self) -> nn.Module:
        """The transformers model computing the active task with plain ``nn.Linear`` layers of ``W ⊙ M``.

        Every masked layer is replaced, in place, by a linear holding a new tensor ``W ⊙ M`` of the
        active mask (the pretrained ``W`` is never written); the other tasks are dropped. The result
        is an ordinary ``PreTrainedModel`` with the task's head and labels (``save_pretrained`` /
        ``pipeline`` work on it). Mean pooling stays as hooks on this object only: transformers'
        ``save_pretrained`` does not keep it.
        """
        if self.active_task is None:
            raise MaskfileError("no active task to merge: set_task one first")
        self.set_task(self.active_task)
        for lname, layer in masked_layers(self.model).items():
            _set(self.model, lname, layer.to_linear() if layer.active is not None else _plain(layer))
        self.heads, self.task_labels, self.task_extra = {}, {}, {}
        self.mask_configs.clear()
        return self.model

    @property
    def mask_config(self) -> MaskConfig:
        """The config of the active mask (the paper preset if it is unknown)."""
        return self.mask_configs.get(self.active_mask, MaskConfig())

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "inputs_embeds": inputs_embeds, "labels": labels}
        return self.model(**{k: v for k, v in given.items() if v is not None}, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def extra_repr(self) -> str:
        return f"base={self.base!r}, task_type={self.task_type!r}, pooling={self.pooling!r}, masks={self.masks}"


class AutoMaskfitModel:
    """Loads a task from its file alone: the base it names, with the head of its task type and pooling
    (as transformers' ``AutoModelFor...`` / peft's ``AutoPeftModel``)."""

    @staticmethod
    def from_pretrained(source, task: str | None = None, *, base=None, device=None, revision: str | None = None,
                        token: str | None = None) -> MaskfitModel:
        return MaskfitModel.from_pretrained(base, source, task, device=device, revision=revision, token=token)


def _plain(layer) -> nn.Linear:
    lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    lin.weight, lin.bias = layer.weight, layer.bias
    return lin


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _check_task_name(name) -> None:
    if not isinstance(name, str) or not TASK_NAME.match(name):
        raise MaskfileError(f"task name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit (it names the task's file)")


def _index(folder: Path) -> dict:
    """A ``save_pretrained`` folder's ``maskfit_config.json``, checked ({} when there is none)."""
    f = folder / CONFIG_NAME
    if not f.is_file():
        return {}
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MaskfileError(f"corrupt {f}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != CONFIG_FORMAT or not isinstance(index.get("tasks"), dict) \
            or not index["tasks"]:
        raise MaskfileError(f"{f} is not a maskfit config (format {CONFIG_FORMAT}, a non-empty 'tasks' object)")
    if index.get("version") != CONFIG_VERSION:
        raise MaskfileError(f"{f}: unsupported version {index.get('version')!r}")
    return index


def task_files(path: Path) -> dict[str, Path]:
    """Task name → mask file of a source: a file (named ``default``), a run folder, or a ``save_pretrained`` folder."""
    if path.is_file():
        return {DEFAULT: path}
    index = _index(path)
    if index:
        files = {}
        for name, rel in index["tasks"].items():
            _check_task_name(name)
            f = (path / str(rel))
            if f.resolve().parent != path.resolve():
                raise MaskfileError(f"{path / CONFIG_NAME}: task '{name}' points outside its folder ({rel})")
            if not f.is_file():
                raise MaskfileError(f"{path}: task '{name}' has no file {rel}")
            files[name] = f
        return files
    if (path / "task.masks").is_file():
        return {DEFAULT: path / "task.masks"}
    raise MaskfileError(f"{path} holds no mask file ({CONFIG_NAME} or task.masks)")
