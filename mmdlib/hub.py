"""Whether the Hugging Face hub can be reached, asked once per process: an offline machine without
``HF_HUB_OFFLINE`` then fails in one line instead of letting huggingface_hub retry every request (81 s and
35 lines of retries for one model, measured)."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from .cache import env_flag

PROBE_SECONDS = 5  # a connection the hub's host does not accept within this is taken as no network
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_address() -> tuple[str, int]:
    """The hub's host and port (``HF_ENDPOINT``, else huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@functools.lru_cache(maxsize=None)
def reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host``:``port`` opens within ``PROBE_SECONDS`` (tried once per process)."""
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        return True
    except OSError:
        return False


def offline_reason() -> str | None:
    """Why the hub cannot be used from here (``HF_HUB_OFFLINE`` set, or its host not answering), or None. Behind
    a proxy the host is not probed (the proxy reaches it, not this machine)."""
    if env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE=1 is set"
    if any(os.environ.get(v) for v in PROXIES):
        return None
    host, port = hub_address()
    return None if reachable(host, port) else f"the hub ({host}:{port}) cannot be reached from this machine"
