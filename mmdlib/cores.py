"""The CPU's cores: how many threads this process computes with, so that runs side by side do not collapse.

Two runs at once on two cores, each with torch's default two threads, ran at 0.29x of their speed alone
(OpenMP threads spin-waiting on cores the other run holds); with one thread each, at 0.69x
(``benchmarks/concurrency.py``). So while a process does heavy work (``sharing_cores``: a finetune, an
evaluation's sampling) it registers in a folder of the machine's active mmdlib runs, and between steps
(``rebalance``) takes the cores divided among them: alone, all of them; beside another run, half.
``MMDLIB_THREADS=n`` fixes the count; an ``OMP_NUM_THREADS`` set by the caller (the book's build gives each
computation one thread), or a count the program set with ``torch.set_num_threads``, is respected as it is. The
thread count changes the last bits of a finetune's weights (sums split across threads add in another order):
usually no printed digit, but learning the timesteps with the weights amplifies those bits into other FIDs
(benchmarks/RESULTS.md). A run that must be bit-reproducible whatever runs beside it sets ``MMDLIB_THREADS``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from .errors import MMDLibError

_held: dict = {"fd": None, "depth": 0, "threads": None, "own": False}  # this process's registration (re-entrant)
_DEFAULT = torch.get_num_threads()  # torch's own choice for this machine (its physical cores), before we change it


def machine_threads() -> int:
    """The threads one run alone computes with: torch's default here (its physical cores, not hyperthreads)."""
    return _DEFAULT


def cores() -> int:
    """The CPU cores this process may run on (its affinity, as a container or ``taskset`` limits it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(requested: int) -> int:
    """DataLoader workers: ``requested``, at most one per core (more only contend: ``--workers 1000`` took 226 s
    where 20 did the work), saying so when it caps."""
    if requested > cores():
        print(f"note: {requested} data workers asked for; this machine gives the run {cores()} cores, so it uses "
              f"{cores()}.", file=sys.stderr)
        return cores()
    return requested


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``n`` intra-op threads (torch's), then restore the count: a CPU training whose weights
    must not depend on the machine's thread count runs under ``threads(1)`` (reductions split across threads
    sum in another order, and the weights of a 40-epoch classifier drift apart in the second decimal)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runs_folder() -> Path:
    """Where the machine's active mmdlib runs register: one locked file per process (a dead process's lock is
    gone, so its file counts for nothing)."""
    return Path(tempfile.gettempdir()) / f"mmdlib-runs-{os.getuid() if hasattr(os, 'getuid') else 0}"


def active_runs() -> int:
    """How many processes are doing mmdlib's heavy work on this machine now (this one included when it is)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no registry, every run alone
        return 1
    live = 0
    for path in runs_folder().glob("*.run"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)  # nobody holds it: a process that died without cleaning up
        except BlockingIOError:
            live += 1
        finally:
            os.close(fd)
    return max(live, 1)


def fair_threads() -> int | None:
    """The intra-op threads this process should use now: ``MMDLIB_THREADS``; None (leave torch's) where the
    caller set ``OMP_NUM_THREADS``; else ``machine_threads()`` divided among the active runs (at least one)."""
    fixed = os.environ.get("MMDLIB_THREADS")
    if fixed:
        if not fixed.isdigit() or int(fixed) < 1:
            raise MMDLibError(f"MMDLIB_THREADS must be a whole number >= 1 (threads per process), got {fixed!r}.")
        return int(fixed)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, machine_threads() // active_runs())


def rebalance() -> None:
    """Between steps of heavy work: take ``fair_threads()`` (cheap: a folder listing), unless the program had set
    its own count (``torch.set_num_threads``) when the work began."""
    n = None if _held["own"] else fair_threads()
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)


@contextlib.contextmanager
def sharing_cores():
    """While the block runs, this process counts as one of the machine's active mmdlib runs (``active_runs``)
    and computes with its share of the cores (``rebalance``, called again between steps); afterwards its
    thread count is restored and it no longer counts."""
    if _held["depth"] == 0:
        _register()
    _held["depth"] += 1
    try:
        rebalance()
        yield
    finally:
        _held["depth"] -= 1
        if _held["depth"] == 0:
            _unregister()


def _register() -> None:
    _held["threads"] = torch.get_num_threads()
    _held["own"] = _held["threads"] != _DEFAULT and not os.environ.get("MMDLIB_THREADS")
    try:
        import fcntl

        folder = runs_folder()
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"  # locked before it is named: never seen unlocked
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, folder / f"{os.getpid()}.run")
        _held["fd"] = fd
    except (ImportError, OSError):  # no registry here (not POSIX, a read-only /tmp): this run counts alone
        _held["fd"] = None


def _unregister() -> None:
    if _held["fd"] is not None:
        (runs_folder() / f"{os.getpid()}.run").unlink(missing_ok=True)
        os.close(_held["fd"])  # releases the lock
        _held["fd"] = None
    torch.set_num_threads(_held["threads"])
