"""Where a command writes: an output path checked, creating nothing, before any work is done."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import MMDLibError


def check_output_folder(path: str | Path) -> Path:
    """Refuse, in one line and creating nothing, an output folder that cannot be used: a file, a dangling
    symlink, a path through a file, a name too long, a place where nothing can be created (tried with a
    folder created and removed again in the nearest existing parent)."""
    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            raise MMDLibError(f"the output folder {str(path)!r} is a symlink to {os.readlink(path)!r}, which does "
                              f"not exist; create the target or choose another --out.")
        if path.exists() and not path.is_dir():
            raise MMDLibError(f"the output folder {str(path)!r} is a file; choose another --out.")
        near = path.absolute()
        while not near.exists():
            near = near.parent
        if not near.is_dir():
            raise MMDLibError(f"the output folder {str(path)!r} is under {str(near)!r}, which is a file; choose "
                              f"another --out.")
        longest = os.pathconf(near, "PC_NAME_MAX")
        for part in path.absolute().relative_to(near).parts:
            if len(os.fsencode(part)) > longest:
                raise OSError(36, "File name too long", part)
        os.rmdir(tempfile.mkdtemp(prefix=".mmdlib-probe-", dir=near))
    except OSError as e:
        raise MMDLibError(f"cannot create the output folder {str(path)!r}: {e.strerror}; choose another "
                          f"--out.") from None
    return path
