"""Compare two mmdlib caches entry by entry, byte for byte: for results that must not depend on how they were
computed (a cold build on one thread per worker against the cache the published book came from).

    python benchmarks/compare_caches.py OLD_CACHE NEW_CACHE

For every entry of NEW_CACHE (``kind/key``), every file must equal OLD_CACHE's, except the wall times a
finetune's ``log.csv`` records (its ``seconds`` column) and the paths JSON metadata records (``PATHS``). Prints
a line per kind and each difference (for JSON numbers, the largest relative change); exits 1 if any entry
differs or is missing from OLD_CACHE.
"""
from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

SKIP = {"runs", "downloads"}  # work folders of unfinished runs, downloaded files


PATHS = {"out", "_name_or_path"}  # where a run or a model was on its machine: not a result


def _content(path: Path):
    if path.name == "log.csv":  # the same rows, wall times aside
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]
    if path.suffix == ".json":
        return _strip(json.loads(path.read_text()))
    return path.read_bytes()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in PATHS}
    return [_strip(v) for v in value] if isinstance(value, list) else value


def _largest_change(a, b) -> float | None:
    """The largest relative difference between two JSON values' numbers, None if their shapes differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [_largest_change(a[k], b[k]) for k in a if k in b]
        return None if a.keys() != b.keys() or None in parts else max(parts, default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        parts = [_largest_change(x, y) for x, y in zip(a, b)]
        return None if len(a) != len(b) or None in parts else max(parts, default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) / max(abs(a), abs(b), 1e-300)
    return 0.0 if a == b else None


def _describe(f: Path, a, b) -> str:
    change = _largest_change(a, b) if f.suffix == ".json" else None
    if change is not None:
        return f"{f} (numbers, at most {change:.1e} relative)"
    if isinstance(a, dict) and isinstance(b, dict):
        return f"{f} (fields {', '.join(_fields(a, b))})"
    return str(f)


def _fields(a: dict, b: dict, at: str = "") -> list[str]:
    """The dotted names of the fields that differ; a field only one side has is marked + (new) or - (old)."""
    out = [f"+{at}{k}={b[k]!r}" for k in b if k not in a] + [f"-{at}{k}" for k in a if k not in b]
    for k in a.keys() & b.keys():
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out += _fields(a[k], b[k], f"{at}{k}.")
        elif a[k] != b[k]:
            out.append(f"{at}{k}")
    return sorted(out)


def compare(old: Path, new: Path) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    problems = []
    for entry in sorted(p for p in new.glob("*/*") if p.is_dir() and p.parent.name not in SKIP
                        and not p.name.startswith(".")):
        kind, other = entry.parent.name, old / entry.relative_to(new)
        if not other.is_dir():
            counts[kind, "missing"] += 1
            problems.append(f"{entry.relative_to(new)}: not in {old}")
            continue
        files = sorted(f.relative_to(entry) for f in entry.rglob("*") if f.is_file())
        differ = [_describe(f, _content(other / f), _content(entry / f)) if (other / f).is_file() else f"{f} (missing)"
                  for f in files if not (other / f).is_file() or _content(entry / f) != _content(other / f)]
        counts[kind, "differ" if differ else "same"] += 1
        if differ:
            problems.append(f"{entry.relative_to(new)}: {', '.join(differ)} differ")
    return counts, problems


def main(old: Path, new: Path) -> int:
    counts, problems = compare(old, new)
    for kind in sorted({k for k, _ in counts}):
        print(f"{kind}: {counts[kind, 'same']} identical, {counts[kind, 'differ']} differ, "
              f"{counts[kind, 'missing']} missing")
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
