"""A finetuning run's folder: what it holds, who may continue it, and how its state is written.

``run.json``    the run's identity (the settings that make two runs the same run), its target iterations,
                its timesteps and the last saved iteration (cheap to read: no checkpoint is loaded for it)
``checkpoint.pt`` weights, optimiser state and iteration, written atomically (a crash leaves the old one)
``log.csv``     one row per iteration (``LOG_FIELDS``)
``samples/``, ``finetuned/``  sample grids and the exported pipeline
"""
from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import torch

from .cache import atomic_save, atomic_write
from .errors import MMDLibError

LOG_FIELDS = ("iteration", "loss", "grad_norm", "seconds")
WRITTEN = ("run.json", "checkpoint.pt", "log.csv", "finetuned", "samples")  # what a run writes in its folder


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def _load_plain(path: Path, map_location) -> dict:
    """torch.load restricted to tensors and plain data (``weights_only``): a crafted file cannot run code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise MMDLibError(f"{str(path)!r} holds more than tensors and plain data, so it was not loaded (unpickling "
                          f"it could run code). mmdlib writes no such checkpoint; was it replaced?") from e


class RunFolder:
    """The folder ``path`` of one run; only the main process (``main``) writes."""

    def __init__(self, path: str | Path, main: bool = True):
        self.path, self.main = Path(path), main
        self.run_file, self.checkpoint, self.log_file = self.path / "run.json", self.path / "checkpoint.pt", \
            self.path / "log.csv"

    def record(self) -> dict | None:
        """What run.json says, or None where there is no run."""
        return json.loads(self.run_file.read_text()) if self.run_file.exists() else None

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
        old = self.record()
        if old is None:
            foreign = [name for name in WRITTEN if (self.path / name).exists()]
            if foreign:
                raise MMDLibError(f"the output folder {str(self.path)!r} holds {', '.join(foreign)} but no run.json, "
                                  f"so they are not an mmdlib run's; nothing was changed or deleted. Choose another "
                                  f"--out, or move them away.")
            return False
        if overwrite:
            return False
        if not resume:
            raise MMDLibError(f"the output folder {str(self.path)!r} already holds a run (iteration "
                              f"{self.saved_iteration()} of {old.get('iterations')}); pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --out. Nothing was changed.")
        diff = {k: (old["identity"].get(k), v) for k, v in identity.items() if old["identity"].get(k) != v}
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
        """Write run.json (``record`` and the iteration) and cut the log back to ``iteration``; with
        ``overwrite``, first remove what an earlier run wrote."""
        if not self.main:
            return
        if overwrite:
            for name in WRITTEN:
                p = self.path / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.run_file, {**record, "iteration": iteration})
        if self.log_file.exists():
            rows = [r for r in csv.DictReader(self.log_file.open()) if int(r["iteration"]) <= iteration]
            with self.log_file.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)

    def save(self, state: dict, iteration: int) -> None:
        """Write the checkpoint ``{**state, "iteration": iteration}`` atomically, then record its iteration."""
        if not self.main:
            return
        atomic_save({**state, "iteration": iteration}, self.checkpoint)
        _write_json(self.run_file, {**self.record(), "iteration": iteration})

    def log(self, row: dict) -> None:
        """Append one row (``LOG_FIELDS``) to log.csv."""
        if not self.main:
            return
        new = not self.log_file.exists()
        with self.log_file.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)
