"""A hub model without network: say so once, fast, before anything else happens.

huggingface_hub retries an unreachable hub for tens of seconds, printing a line each time. So before any
model file is asked for, diffdiff looks into the Hugging Face cache itself (no import of huggingface_hub,
which reads HF_HUB_OFFLINE once, when it is imported) and probes the hub once, quietly, with a short
timeout: a cached model then runs offline from the cache; an uncached one fails at once with one line.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from diffdiff_cli.errors import InputError

PROBE_TIMEOUT = 1.0  # seconds: DNS and the TCP connection together
_TRUE = ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def is_cached(repo: str, filenames=("model_index.json",)) -> bool:
    """True when some snapshot of `repo` in the cache holds one of `filenames`."""
    snapshots = cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
    try:
        return any((snapshot / name).is_file() for snapshot in snapshots.iterdir() for name in filenames)
    except OSError:
        return False


def endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """One quiet TCP connection to the hub's host; DNS included, bounded by `timeout` (a thread, since name
    resolution takes no timeout of its own)."""
    host, port = endpoint()
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def offline_from_environment() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def prepare(source, offline: bool, flag: str = "--model", filenames=("model_index.json",), reporter=None) -> bool:
    """Decide, before any download is tried, how a hub model is read; return the `offline` to use.

    Not a hub id, or offline already: unchanged. The hub answers: online. It does not: a cached model is
    read from the cache (offline from here on, with a notice); an uncached one is an error, now.
    """
    if getattr(source, "kind", None) != "hub" or offline or offline_from_environment():
        return offline
    if reachable():
        return False
    host, _ = endpoint()
    if is_cached(source.value, filenames):
        os.environ["HF_HUB_OFFLINE"] = "1"  # read before huggingface_hub is first imported: no retries
        if reporter is not None:
            reporter.notice(f"{host} cannot be reached: {flag} {_label(source)} runs from the Hugging Face cache")
        return True
    raise InputError(
        f"{flag} {_label(source)}: {source.value} is not in the Hugging Face cache and {host} cannot be reached "
        f"(no network?); download it once with network access, or give a local folder or .safetensors file"
    )


def _label(source) -> str:
    return getattr(source, "label", None) or source.value
