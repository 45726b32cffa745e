"""A content-keyed cache for things mmdlib builds on first use (base model, digit classifiers, statistics).

Entries live under ``$MMDLIB_CACHE`` (default ``~/.cache/mmdlib``) at ``kind/<hash of config>``; they
are built in a temporary folder and renamed into place, so a reader never sees half an entry, and a
file lock makes a second process wait for the first builder instead of building again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock


def cache_dir() -> Path:
    """The cache root: $MMDLIB_CACHE, else ~/.cache/mmdlib."""
    return Path(os.environ.get("MMDLIB_CACHE") or Path.home() / ".cache" / "mmdlib")


def env_flag(name: str) -> bool:
    """A boolean environment switch: 1, true, yes or on (any case) turn it on."""
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def smoke_test() -> bool:
    """True when ``MMDLIB_SMOKE=1``: the embedded default shrinks (a tiny base model, classifiers trained for
    one epoch) and the notebooks run in seconds. For tests and CI; results are meaningless."""
    return env_flag("MMDLIB_SMOKE")


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(kind: str, config: dict, build: Callable[[Path], None]) -> Path:
    """The folder for ``config``, calling ``build(tmp_folder)`` once if it is not there yet."""
    final = cache_dir() / kind / config_key(config)
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "config.json").exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(tmp)
            (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
            if final.exists():  # a stale, incomplete entry
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename over it."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
