"""A finetuning run's folder: what it holds, who may continue it, and how its state is written.

``run.json``    the run's identity (the settings that make two runs the same run), its target iterations,
                its timesteps and the last saved iteration (cheap to read: no checkpoint is loaded for it)
``checkpoint.pt`` weights, optimiser state and iteration, written atomically (a crash leaves the old one)
``log.csv``     one row per iteration (``LOG_FIELDS``, and a run's own extra columns: learnt timesteps)
``samples/``, ``finetuned/``  sample grids and the exported pipeline

The main process holds an exclusive lock on the folder (``flock`` on the directory itself, so nothing is
written into a folder it then refuses) from before it reads the folder until the run ends: a second run
on the same folder is refused with the PID that holds it.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import socket
from pathlib import Path

import torch

from .cache import atomic_save, atomic_write, check_finite
from .errors import Interrupted, MMDLibError
from .outputs import check_output_folder
from .runfiles import RunFiles

LOG_FIELDS = ("iteration", "loss", "grad_norm", "seconds")
CHANGEABLE = ("lr",)  # identity settings --resume may change (a deliberate change, recorded in run.json)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def _load_plain(path: Path, map_location) -> dict:
    """torch.load restricted to tensors and plain data (``weights_only``): a crafted file cannot run code."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise MMDLibError(f"{str(path)!r} holds more than tensors and plain data, so it was not loaded (unpickling "
                          f"it could run code). mmdlib writes no such checkpoint; was it replaced?") from e
    except Exception as e:  # empty (EOFError), truncated (RuntimeError), garbage (KeyError, ...)
        what = "empty" if path.stat().st_size == 0 else f"truncated or not a torch file: {type(e).__name__}"
        raise MMDLibError(f"{str(path)!r} is not a readable checkpoint ({what}); mmdlib writes checkpoints "
                          f"atomically, so it was damaged or replaced after it was written. Restore it, or start "
                          f"again with --overwrite.") from e
    if not isinstance(state, dict) or not {"unet", "optimizer", "iteration"} <= state.keys():
        raise MMDLibError(f"{str(path)!r} is a torch file but not an mmdlib checkpoint (it lacks unet, optimizer and "
                          f"iteration). Restore it, or start again with --overwrite.")
    if not _is_count(state["iteration"]):
        raise MMDLibError(f"{str(path)!r} records iteration {state['iteration']!r}, not a count; it was edited or "
                          f"replaced. Restore it, or start again with --overwrite.")
    check_finite(state["unet"], str(path))  # mmdlib saves only after a step that passed
    return state


def _is_count(value) -> bool:
    """Whether ``value`` is an iteration count: an int (not a bool) >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_record(record) -> str | None:
    """What is wrong with a run.json's contents, or None: a JSON object with the identity of a run (an object),
    its target iterations and its last saved iteration (counts)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("identity"), dict):
        return "no identity (the settings that make the run)"
    for key in ("iteration", "iterations"):
        if not _is_count(value := record.get(key, 0)):
            return f"{key} {value!r}, not a count"
    return None


def read_record(path: Path) -> dict:
    """A run.json's contents, refused in one line when it is not valid JSON or not a run record (``_bad_record``)."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise MMDLibError(f"{str(path)!r} is not valid JSON (mmdlib writes it atomically, so it was edited or "
                          f"replaced); restore it, or start again with --overwrite.") from None
    except OSError as e:
        raise MMDLibError(f"cannot read {str(path)!r}: {e.strerror}.") from None
    if (why := _bad_record(record)) is not None:
        raise MMDLibError(f"{str(path)!r} is not an mmdlib run record (it holds {why}); it was edited or replaced: "
                          f"restore it, or start again with --overwrite.")
    return record


def _cut_log(path: Path, iteration: int) -> None:
    """Keep the log's rows up to ``iteration`` (a resumed run repeats the later ones), atomically."""
    reader = csv.DictReader(path.open())
    rows = [r for r in reader if int(r["iteration"]) <= iteration]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=reader.fieldnames)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def check_resume_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuse asking to continue a run and to replace it at once (which one was meant cannot be known)."""
    if resume and overwrite:
        raise MMDLibError("--resume continues the run in the folder and --overwrite replaces it; pass one of them. "
                          "Nothing was changed.")


class RunFolder(RunFiles):
    """The folder ``path`` of one run; only the main process (``main``) writes."""

    def __init__(self, path: str | Path, main: bool = True, files: tuple[str, ...] = (),
                 pipelines: tuple[str, ...] = ()):
        """The folder at ``path``, checked (``check_output_folder``) but not created. ``files`` (glob patterns)
        and ``pipelines`` (folder names): what else the run writes there (the demo's metrics and base model)."""
        super().__init__(check_output_folder(path), main, files, pipelines)
        self._lock: int | None = None

    def lock(self) -> None:
        """Create the folder if needed and hold an exclusive lock on it until ``unlock`` (or this process
        ends); a folder another process holds is refused with its PID. The main process only."""
        if not self.main or self._lock is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = self.record() or {}
            holder = f"PID {who['pid']} on {who.get('host', '?')}" if "pid" in who else "another process"
            raise MMDLibError(f"the output folder {str(self.path)!r} is in use by {holder}, which is running a "
                              f"finetune in it; wait for it to end (or stop it), or choose another --out. Nothing "
                              f"was changed.") from None
        self._lock = fd

    def open(self, identity: dict, resume: bool = False, overwrite: bool = False,
             iterations: int | None = None) -> bool:
        """Lock the folder (the main process, creating it) and ``check`` it (every process): whether to continue
        its run. A refused folder is unlocked again, and removed when this call created it."""
        self.created = self.main and not self.path.exists()
        self.lock()
        try:
            return self.check(identity, resume, overwrite, iterations)
        except BaseException:
            self.unlock()
            if self.created:
                self.path.rmdir()
            raise

    def unlock(self) -> None:
        """Release the lock ``lock`` took (nothing if it holds none)."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def record(self) -> dict | None:
        """What run.json says (``read_record``), or None where there is no run."""
        return read_record(self.run_file) if self.run_file.exists() else None

    def saved_iteration(self) -> int:
        """The iteration of the last checkpoint (0 where there is none)."""
        if not self.checkpoint.exists():
            return 0
        record = self.record() or {}
        if "iteration" in record:
            return record["iteration"]
        return _load_plain(self.checkpoint, "cpu")["iteration"]  # folders written before run.json kept it

    def check(self, identity: dict, resume: bool, overwrite: bool, iterations: int | None = None) -> bool:
        """Whether to continue the run the folder holds (True) or start afresh; refuses, changing nothing,
        a folder holding a run unless ``resume`` (with the same ``identity``, to at least its saved
        iteration) or ``overwrite`` is given, and a folder holding files a run writes but no run.json (they
        are someone else's: neither overwritten nor deleted)."""
        check_resume_overwrite(resume, overwrite)
        if not self.run_file.exists():
            foreign = sorted(p.name for p in self.owned())
            if foreign:
                raise MMDLibError(f"the output folder {str(self.path)!r} holds {', '.join(foreign)} but no run.json, "
                                  f"so they are not an mmdlib run's; nothing was changed or deleted. Choose another "
                                  f"--out, or move them away.")
            return False
        self.written()  # no symbolic link where the run writes, whatever comes next
        if overwrite:  # the run.json is mmdlib's name, even damaged: replacing the run removes only what it wrote
            return False
        old = self.record()
        if not resume:
            raise MMDLibError(f"the output folder {str(self.path)!r} already holds a run (iteration "
                              f"{self.saved_iteration()} of {old.get('iterations')}); pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --out. Nothing was changed.")
        diff = {k: (old["identity"].get(k), v) for k, v in identity.items()
                if old["identity"].get(k) != v and k not in CHANGEABLE}
        if diff:
            raise MMDLibError(f"the output folder {str(self.path)!r} holds a different run; these settings differ "
                              f"(saved, requested): {diff}. Use another --out, or --overwrite. Nothing was changed.")
        saved = self.saved_iteration()
        if iterations is not None and iterations < saved:
            raise MMDLibError(f"the run in {str(self.path)!r} is at iteration {saved}; resuming cannot undo iterations, "
                              f"so --iterations {iterations} is refused. Ask for {saved} or more, or start again with "
                              f"--overwrite. Nothing was changed.")
        return True

    def load(self, map_location) -> dict | None:
        """The checkpoint (weights, optimiser state, iteration), or None; tensors and plain data only."""
        if not self.checkpoint.exists():
            return None
        return _load_plain(self.checkpoint, map_location)

    def start(self, record: dict, iteration: int, overwrite: bool) -> None:
        """Write run.json (``record``, the iteration, this process's PID and a log of the CHANGEABLE settings
        a resume changed) and cut the log back to ``iteration``; with ``overwrite``, first remove what an
        earlier run wrote. Temporary files a killed process left behind are removed."""
        if not self.main:
            return
        old = None if overwrite else self.record()
        if overwrite:
            self.remove_written()
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        changes = list((old or {}).get("changes", []))
        for k in CHANGEABLE if old else ():
            if old["identity"].get(k) != record["identity"].get(k):
                changes.append({"iteration": iteration, "setting": k, "from": old["identity"].get(k),
                                "to": record["identity"].get(k)})
        _write_json(self.run_file, {**record, "iteration": iteration, "pid": os.getpid(), "host": socket.gethostname(),
                                    **({"changes": changes} if changes else {})})
        if self.log_file.exists():
            _cut_log(self.log_file, iteration)

    def save(self, state: dict, iteration: int, **record) -> None:
        """Write the checkpoint atomically, then its iteration (and ``record``: learnt timesteps) to run.json."""
        if not self.main:
            return
        atomic_save({**state, "iteration": iteration}, self.checkpoint)
        _write_json(self.run_file, {**self.record(), **record, "iteration": iteration})

    def log(self, row: dict) -> None:
        """Append one row (``LOG_FIELDS`` and the run's extra columns, in the order the first row had) to log.csv."""
        if not self.main:
            return
        new = not self.log_file.exists()
        with self.log_file.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*LOG_FIELDS, *(k for k in row if k not in LOG_FIELDS)])
            if new:
                w.writeheader()
            w.writerow(row)


def stopped(folder: RunFolder, error: BaseException, iteration: int, fresh: bool) -> BaseException:
    """What to raise for a run in ``folder`` that ``error`` stopped at ``iteration``: a fresh run with no
    checkpoint yet is discarded (it leaves nothing behind); Ctrl-C becomes ``Interrupted``, saying how to continue."""
    kept = folder.checkpoint.exists()
    if fresh and not kept:
        folder.discard()
    if not isinstance(error, KeyboardInterrupt) or isinstance(error, Interrupted):
        return error
    return Interrupted(f"interrupted at iteration {iteration}; the last checkpoint is at iteration "
                       f"{folder.saved_iteration()}: rerun the same command with --resume to continue from it."
                       if kept else f"interrupted at iteration {iteration}, before the first checkpoint, so the "
                       f"run left nothing behind: rerun the same command to start it again.")


def unstable(folder: RunFolder, what, iteration: int, lr: float, save_every: int, stepped: bool = True) -> MMDLibError:
    """The error for a run stopped at ``iteration`` because ``what`` (a loss, gradient or weights no longer
    finite, or blown up): it names the folder's last checkpoint, written after a step that passed, and the
    command that continues from it. Found before any weight moved (``what.before_step``) in a run that has not
    ``stepped`` yet, it is not the learning rate's doing, and says so."""
    if getattr(what, "before_step", False) and not stepped:
        return MMDLibError(f"{what} at iteration {iteration}, before this run took any step, so the learning rate "
                           f"is not the cause: the model, the feature space or the real images give non-finite "
                           f"values. Nothing was changed.")
    saved = folder.saved_iteration()
    restart = (f"The last checkpoint, {folder.checkpoint} (iteration {saved}), was written before this: continue "
               f"from it with a smaller learning rate by rerunning the same command with --resume --lr {lr / 10:g}."
               if saved else f"No checkpoint was written yet (the first comes at iteration {save_every}), so the run "
               f"left nothing behind: rerun the same command with --lr {lr / 10:g}.")
    return MMDLibError(f"{what} at iteration {iteration} (lr {lr:g}); stopped. {restart}")

