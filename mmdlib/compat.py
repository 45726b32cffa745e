"""Names that moved in 0.2, still importable from where they were for one release (0.3 removes them)."""
from __future__ import annotations

import warnings
from typing import Callable


def moved(module: str, names: dict[str, tuple[object, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``names`` (old name -> (the object, where it lives now)) with a
    DeprecationWarning that names the new place."""
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        obj, new = names[name]
        warnings.warn(f"{module}.{name} is deprecated and goes in 0.3: use {new}", DeprecationWarning, stacklevel=2)
        return obj

    return __getattr__
