"""A content-keyed cache for things mmdlib builds on first use (base model, digit classifiers, statistics).

Entries live under ``$MMDLIB_CACHE`` (default ``~/.cache/mmdlib``) at ``kind/<hash of config>``; they
are built in a temporary folder and renamed into place, so a reader never sees half an entry, and a
file lock makes a second process wait for the first builder instead of building again. Every key holds
``RESULTS_VERSION`` and the smoke switch besides what its caller puts in it (weights by their hash,
never by a path or a name), so changed code or a smoke build never hands out an old or a toy result.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .errors import MMDLibError


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``hashlib``'s ``algorithm``), read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# Bump when the meaning of a cached result changes (a fix to sampling, noise streams, metrics or training):
# every cache key holds it, so no result computed by older code is reused.
RESULTS_VERSION = 2


def weights_hash(weights) -> str:
    """SHA-256 (16 hex digits) of a module's state dict, or of a dict of tensors: names, dtypes, shapes, bytes."""
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_finite(weights, what: str) -> None:
    """Refuse a state dict (or a module's) holding a NaN or an infinity, naming the first tensor that does: such
    weights sample NaN, and every score or loss computed from them would be meaningless."""
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    for name, t in state.items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise MMDLibError(f"{what}: the weight {name!r} holds {bad:,} non-finite value(s) (NaN or infinity), so it "
                              f"was not used; the file was damaged, or the run that wrote it diverged.")


def trained_on(device) -> dict:
    """The cache-key field naming the device class that trains an entry (other kernels, other weights): none
    on the CPU, so the keys of CPU-trained entries are those they had before training could use a GPU."""
    import torch

    kind = torch.device(device).type
    return {} if kind == "cpu" else {"device": kind}


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def full_key(config: dict) -> dict:
    """``config`` with what every cache key holds: the results version and the smoke switch."""
    return {"results_version": RESULTS_VERSION, "smoke": smoke_test(), **config}


def cached(kind: str, config: dict, build: Callable[[Path], None]) -> Path:
    """The folder for ``config`` (with ``full_key``'s additions), calling ``build(tmp_folder)`` once if it
    is not there yet."""
    config = full_key(config)
    final = cache_dir() / kind / config_key(config)
    if (final / "config.json").exists():  # a read-only cache still serves what it holds
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(final) + ".lock")
        lock.acquire()
    except OSError as e:
        raise MMDLibError(f"the cache {str(cache_dir())!r} cannot be written ({e.strerror}: {e.filename}); set "
                          f"MMDLIB_CACHE to a writable folder.") from None
    try:
        if (final / "config.json").exists():  # another process built it while we waited
            return final
        for stale in final.parent.glob(f".{final.name}-*"):  # a killed builder's (we hold the key's lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(tmp)
            (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
            if final.exists():  # a stale, incomplete entry
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _log_built(kind, final.name)
    finally:
        lock.release()
    return final


def _log_built(kind: str, key: str) -> None:
    """With ``$MMDLIB_CACHE_LOG`` set, append the entry just built (a JSON line: kind, key, process): the
    book's build names what the notebooks computed that its plan did not."""
    path = os.environ.get("MMDLIB_CACHE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "key": key, "pid": os.getpid()}) + "\n")


TEMPORARY = ".mmdlib-tmp-"  # atomic_write's temporary files are ".<name>.mmdlib-tmp-<8 of tempfile's characters>"


def temporaries(path: Path) -> list[Path]:
    """The temporary files ``atomic_write(path, ...)`` calls that were killed left beside ``path``: exactly those
    names, never a user's ``.log.csv-backup``."""
    pattern = re.compile(re.escape(f".{path.name}{TEMPORARY}") + r"[a-z0-9_]{8}")
    return [p for p in path.parent.glob(f".{glob.escape(path.name)}{TEMPORARY}*") if pattern.fullmatch(p.name)]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (``atomic_write``)."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))
