"""Task heads: the transformers model class for each task type, built on a named base.

sequence → ``AutoModelForSequenceClassification`` (single sentences and pairs)
tagging  → ``AutoModelForTokenClassification`` (a word is its last wordpiece; see data.encode)
choice   → ``AutoModelForMultipleChoice`` (one score per (context, choice) pair)
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from .errors import ModelError
from .masking.apply import unwrap
from .masking.targets import architecture_for
from .model import MaskfitModel
from .models import resolve_model
from .tasktypes import TASK_TYPES, task_type as get_task_type

POOLINGS = ("cls", "mean")
HEAD_CLASSES = {name: t.auto_model for name, t in TASK_TYPES.items()}

# Heads whose pre-classifier is a fresh dense layer of the pooler's shape: we start it
# from the checkpoint's pooler, so every architecture has a pretrained W_P as in BERT.
POOLER_INTO_PRE_CLASSIFIER = {"roberta": "classifier.dense", "xlm-roberta": "classifier.dense",
                              "camembert": "classifier.dense", "mpnet": "classifier.dense"}

# Tokenizers that need add_prefix_space=True for pre-split words (tagging tasks).
BYTE_LEVEL_BPE = {"roberta", "xlm-roberta", "camembert", "gpt2", "longformer"}

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model_name: str):
    path = resolve_model(model_name)
    kwargs = {}
    try:
        if AutoConfig.from_pretrained(path).model_type in BYTE_LEVEL_BPE:
            kwargs["add_prefix_space"] = True  # needed to tokenise pre-split words (tagging)
    except (OSError, ValueError):
        pass
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer of '{model_name}': {str(e).splitlines()[0]}") from None


def check_head(task_type: str, pooling: str = "cls") -> None:
    """Refuse an unknown task type or pooling, or a pooling the task type cannot use."""
    kind = get_task_type(task_type)
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling '{pooling}'; expected one of {', '.join(POOLINGS)}")
    if pooling not in kind.poolings:
        raise ModelError(f"--pooling {pooling} applies to sentence and choice tasks; tagging heads read every token")


def _set_dropout(config, p: float) -> None:
    """Every dropout probability of a transformers config (hidden, attention, classifier) → ``p``."""
    for key, value in list(vars(config).items()):
        if key.endswith(("dropout", "dropout_prob")) and (value is None or isinstance(value, (int, float))):
            setattr(config, key, float(p))


def build_model(model_name: str, task_type: str, labels=None, seed: int = 0, config=None, pooling: str = "cls",
                dropout: float | None = None, device=None) -> MaskfitModel:
    """The pretrained encoder ``model_name`` with a random head for ``task_type``, as a :class:`MaskfitModel`.

    The head is initialised from ``seed`` (so it is reproducible and can be stored in
    a mask file). With ``config`` (a transformers config) the model is built with
    random weights instead of loading a checkpoint, used for tests on true shapes.
    ``pooling`` is what sequence and choice heads read: ``cls`` (the paper: the first
    token) or ``mean`` (see :class:`MeanPooling`); tagging heads read every token.
    ``dropout`` replaces every dropout probability of the checkpoint's config (``None``:
    keep them). ``device`` is where the model is put (default: the CPU).
    """
    check_head(task_type, pooling)
    labels = list(labels) if labels is not None and task_type != "choice" else None
    if task_type != "choice" and not labels:
        raise ModelError(f"a {task_type} head needs its labels")
    head_kwargs = {}
    if labels is not None:
        head_kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                       "label2id": {l: i for i, l in enumerate(labels)}}
    cls = HEAD_CLASSES[task_type]
    torch.manual_seed(seed)
    copied = False
    if config is not None:
        for k, v in head_kwargs.items():
            setattr(config, k, v)
        if dropout is not None:
            _set_dropout(config, dropout)
        model = cls.from_config(config)
    else:
        path = resolve_model(model_name)
        try:
            cfg = AutoConfig.from_pretrained(path, **head_kwargs)
            if dropout is not None:
                _set_dropout(cfg, dropout)
            model = cls.from_pretrained(path, config=cfg)
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load model '{model_name}': {str(e).splitlines()[0]}") from None
        copied = _pooler_into_pre_classifier(model, path)
    wrapped = MaskfitModel(model, model_name, task_type, labels, pooling, pooler_copied=copied)
    set_pooling(wrapped, pooling)
    return wrapped.to(device) if device is not None else wrapped


def set_pooling(model: nn.Module, pooling: str) -> None:
    """Make ``model``'s head read ``pooling`` (hooks on its current encoder module)."""
    if isinstance(model, MaskfitModel):
        model.pooling = pooling
    if pooling == "mean":
        MeanPooling(unwrap(model))


class MeanPooling:
    """Puts the attention-masked mean of the last hidden states where the head reads [CLS].

    Every sequence and choice head of the supported architectures reads position 0 of
    the encoder's output (BERT's pooler, RoBERTa/MPNet's classification head,
    DistilBERT's pre-classifier), so replacing that one vector is the whole change: the
    pooler / pre-classifier and classifier stay as they are (and masked). Sentence-
    transformer bases (all-MiniLM, all-mpnet) were trained to be read by the mean, and
    their [CLS] vector carries little sentence information.

    Hooks on the base model record the attention mask for the duration of its call; a
    hook on the encoder rewrites its output before the pooler sees it, and only inside a
    call of *this* model (a server shares one encoder between heads with different
    poolings). State lives in a ``threading.local``, so concurrent forwards do not mix.
    """

    def __init__(self, model: nn.Module):
        base = model.base_model
        encoder = base.get_submodule(architecture_for(model.config.model_type).encoder)
        self._local = threading.local()
        base.register_forward_pre_hook(self._enter, with_kwargs=True)
        base.register_forward_hook(self._leave)
        encoder.register_forward_hook(self._mean_into_first)

    def _enter(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        self._local.mask, self._local.active = mask, True

    def _leave(self, module, args, output):
        self._local.mask, self._local.active = None, False

    def _mean_into_first(self, module, args, output):
        if not getattr(self._local, "active", False):
            return output
        hidden = output[0]
        mask = self._local.mask
        if mask is None:
            mean = hidden.mean(dim=1)
        else:
            m = mask.to(hidden.dtype).unsqueeze(-1)
            mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        hidden = torch.cat([mean.unsqueeze(1), hidden[:, 1:]], dim=1)
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        output["last_hidden_state"] = hidden
        return output


def _pooler_into_pre_classifier(model: nn.Module, path: str) -> bool:
    """Start a RoBERTa/MPNet pre-classifier from the checkpoint's pooler; True when it was."""
    target = POOLER_INTO_PRE_CLASSIFIER.get(model.config.model_type)
    if target is None:
        return False
    try:
        dense = model.get_submodule(target)
    except AttributeError:
        return False
    pooler = _checkpoint_tensors(path, ("pooler.dense.weight", "pooler.dense.bias"))
    if pooler is None or pooler[0].shape != dense.weight.shape:
        return False
    with torch.no_grad():
        dense.weight.copy_(pooler[0])
        dense.bias.copy_(pooler[1])
    return True


def _checkpoint_tensors(path: str, names: tuple[str, ...]):
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    for f in files:
        with safe_open(str(f), "pt") as st:
            keys = set(st.keys())
            for prefix in ("", "roberta.", "mpnet.", "bert."):
                if all(prefix + n in keys for n in names):
                    return [st.get_tensor(prefix + n) for n in names]
    return None


def set_prior_bias(model: nn.Module, counts) -> None:
    """Start the classifier's bias (W_T's) at the log of each class's share of ``counts``, add-one smoothed.

    The paper's head is random with bias 0 and, under masking, never trained: it starts by
    giving every class the same odds, and with no trainable bias a mask can learn the label
    prior only through the encoder, as one direction added to every example's pooled vector.
    Starting the bias at the prior leaves the mask only the input-dependent part to learn.
    Measured once (MPNet MRPC, lr 1e-4) it did not prevent a collapse onto the majority
    class; the lower lr did (RESULTS.md), so the default stays the paper's zero bias.
    """
    inner = unwrap(model)
    arch = architecture_for(inner.config.model_type)
    found = [m for n, m in inner.named_modules() if n in arch.classifier and isinstance(m, nn.Linear)]
    if not found or found[0].bias is None or found[0].bias.numel() != len(counts):
        raise ModelError(f"--head-bias prior needs a classifier with a bias of {len(counts)} classes; "
                         f"this {type(inner).__name__} has none")
    share = torch.tensor(list(counts), dtype=torch.float64) + 1.0
    with torch.no_grad():
        found[0].bias.copy_(torch.log(share / share.sum()).to(found[0].bias.dtype))


def random_head_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → tensor of the head's randomly initialised parameters.

    These are what a mask file stores besides the masks: every parameter outside the
    base model, except a pre-classifier that :func:`build_model` starts from the
    checkpoint's pooler (it is rebuilt from the base on load).
    """
    copied = getattr(model, "pooler_copied", False)
    model = unwrap(model)
    base_names = {f"{model.base_model_prefix}.{n}" for n, _ in model.base_model.named_parameters()}
    skip = ""
    if copied:
        skip = POOLER_INTO_PRE_CLASSIFIER[model.config.model_type] + "."
    out = {}
    for n, p in model.named_parameters():
        if n in base_names or n.endswith(".scores") or (skip and n.startswith(skip)):
            continue
        out[n] = p
    return out
