"""What a finetuning run writes in its folder, by name: so that replacing or discarding a run removes exactly
that, never a file a user put beside it, and never through a symbolic link."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .cache import temporaries
from .errors import MMDLibError
from .export import pipeline_files, remove_files

FILES = ("run.json", "checkpoint.pt", "log.csv")  # what a run writes in its folder: these files,
GRIDS = "samples"  # its sample grids, iter_NNNNNN.png in this folder,
PIPELINES = ("finetuned",)  # and its exported pipeline (export.PIPELINE_FILES)


class RunFiles:
    """The files a run writes in the folder ``path`` (``FILES``, the grids, the pipelines, and a caller's
    ``files`` patterns and ``pipelines``); only the ``main`` process removes any."""

    def __init__(self, path: Path, main: bool = True, files: tuple[str, ...] = (), pipelines: tuple[str, ...] = ()):
        self.path, self.main = path, main
        self.run_file, self.checkpoint, self.log_file = path / "run.json", path / "checkpoint.pt", path / "log.csv"
        self.files, self.pipelines = (*FILES, *files), (*PIPELINES, *pipelines)
        self.created = False  # whether opening it created the folder

    def owned(self) -> list[Path]:
        """The entries of the folder a run writes (by name: ``files``, ``GRIDS``, ``pipelines``) that exist."""
        names = [self.path / n for n in (GRIDS, *self.pipelines)] + \
            [p for pattern in self.files for p in sorted(self.path.glob(pattern))]
        return [p for p in names if p.exists() or p.is_symlink()]

    def written(self) -> tuple[list[Path], list[Path]]:
        """(the files a run wrote here, the folders to remove where that empties them): ``files``, the grids in
        ``GRIDS`` and each pipeline's own files. Refuses, before anything is removed, a plan that would follow
        or delete through a symbolic link, or that finds a file where a run writes a folder."""
        owned = self.owned()
        files = [p for p in owned if p.name not in (GRIDS, *self.pipelines)]
        folders = []
        grids = self.path / GRIDS
        if grids.is_dir() and not grids.is_symlink():
            files += [p for p in sorted(grids.iterdir()) if re.fullmatch(r"iter_\d{6}\.png", p.name)]
            folders.append(grids)
        for name in self.pipelines:
            if (self.path / name).is_dir() and not (self.path / name).is_symlink():
                inside, dirs = pipeline_files(self.path / name)
                files, folders = files + inside, folders + dirs
        for p in [*files, *folders, *owned]:
            if p.is_symlink():
                raise MMDLibError(f"{str(p)!r} is a symbolic link (to {os.readlink(p)!r}); a run writes "
                                  f"{p.relative_to(self.path).parts[0]} itself, so mmdlib neither writes through "
                                  f"nor removes the link. Remove it, or choose another --out. Nothing was changed.")
        for name in (GRIDS, *self.pipelines):
            if (self.path / name).exists() and not (self.path / name).is_dir():
                raise MMDLibError(f"{str(self.path / name)!r} is a file, where a run writes a folder; move it away, "
                                  f"or choose another --out. Nothing was changed.")
        return files, folders

    def remove_written(self) -> None:
        """Remove what a run wrote here (``written``: planned whole, then removed), leaving anything else."""
        remove_files(*self.written())

    def remove_temporaries(self) -> None:
        """Remove the temporary files a killed process left beside the run's files (``cache.temporaries``)."""
        for written in (self.run_file, self.checkpoint, self.log_file):
            for stale in temporaries(written):
                stale.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove what this run wrote, and the folder if opening it created it and nothing else is in it: a run
        that failed before its first checkpoint leaves nothing behind."""
        if not self.main:
            return
        self.remove_written()
        self.remove_temporaries()
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass
