"""The Hugging Face Hub, for users with a network: fetch and push mask folders, fail fast without one.

Everything that talks to the hub asks :func:`hub_offline` first, so an offline machine gets a
one-line error within about a second instead of the hub client's retries and timeouts.
"""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from .errors import MaskfileError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``owner/name``: what a hub repo id looks like (a path that does not exist locally and has this shape
is taken as one)."""

TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline(timeout: float = 0.8) -> bool:
    """True when ``HF_HUB_OFFLINE`` is set or the hub's host cannot be reached within ``timeout`` seconds.

    The probe (DNS lookup + TCP connect) runs in a daemon thread that is given up on after
    ``timeout``: a resolver without a network can block far longer than a socket timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE:
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # a direct connection test says nothing behind a proxy
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    reached = threading.Event()

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            reached.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return not reached.wait(timeout)


def _offline_error(what: str) -> MaskfileError:
    return MaskfileError(f"{what}: the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE is set)")


def resolve_source(source: str | os.PathLike, revision: str | None = None, token: str | None = None) -> Path:
    """A mask file, a run folder or a ``save_pretrained`` folder: a local path, or a hub repo id to download."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not REPO_ID.match(text) or text.endswith((".masks", ".safetensors", ".json")):
        raise MaskfileError(f"mask file not found: {text}")
    if hub_offline():
        raise _offline_error(f"'{text}' is not a local file or folder, and cannot be fetched as a hub repo")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, token=token,
                                      allow_patterns=["*.json", "*.masks", "*.md"]))
    except Exception as e:  # noqa: BLE001 - any failure to fetch is one line here
        raise MaskfileError(f"could not fetch '{text}' from the hub: {_first_line(e)}") from None


def push_folder(folder: Path, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None, revision: str | None = None) -> str:
    """Upload ``folder`` to hub repo ``repo_id`` (created if missing); returns the commit URL."""
    if not REPO_ID.match(str(repo_id)):
        raise MaskfileError(f"'{repo_id}' is not a hub repo id (owner/name)")
    if hub_offline():
        raise _offline_error(f"cannot push to '{repo_id}'")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or "Upload maskfit task masks")
    except Exception as e:  # noqa: BLE001
        raise MaskfileError(f"could not push to '{repo_id}': {_first_line(e)}") from None
    return str(getattr(info, "commit_url", info))


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
