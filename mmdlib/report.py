"""Numbers and words for the book's pages, computed from results (never typed): mean ± std cells, gap
shares, and comparisons that say only what the spread over seeds supports."""
from __future__ import annotations

import math

import pandas as pd


def cell(row: dict, metric: str = "fid", digits: int = 2) -> str:
    """``"mean ± std"`` of ``metric`` in a score row (``evaluate``'s), or the mean alone for one seed."""
    mean, std, n = row[metric], row.get(f"{metric}_std", 0.0), len(row.get("fid_per_seed", [0]))
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def table(results: dict[str, dict], space: str, metric: str = "fid", digits: int = 2) -> pd.DataFrame:
    """The paper's table layout with mean ± std cells: rows are methods (the keys of ``results``), columns
    are budgets."""
    rows = {name: {f"|T|={b}": cell(r[b][space], metric, digits) for b in r} for name, r in results.items()}
    t = pd.DataFrame.from_dict(rows, orient="index")
    t.columns.name = f"{metric.upper()} in {space}"
    return t


def space_table(rows: dict[str, dict], spaces, title: str, metric: str = "fid", digits: int = 2) -> pd.DataFrame:
    """One budget's scores side by side: rows are models or settings (``rows``: name -> ``{space: score
    row}``), columns are the feature spaces, cells are mean ± std; ``title`` names the table."""
    t = pd.DataFrame.from_dict({name: {f"{metric.upper()} ({s})": cell(r[s], metric, digits) for s in spaces}
                                for name, r in rows.items()}, orient="index")
    t.columns.name = title
    return t


def gap_closed(base_few: float, finetuned_few: float, base_many: float) -> float:
    """Share of the base model's few-to-many-step FID gap that finetuning closes (1: the finetuned model at
    few steps matches the base model at many; above 1: it beats it)."""
    gap = base_few - base_many
    return (base_few - finetuned_few) / gap if gap > 0 else float("nan")


def compare(a: dict, b: dict, metric: str = "fid") -> str:
    """How score row ``a`` compares with ``b`` (lower is better): "lower than" or "higher than" when the
    means differ by more than twice their combined standard error over seeds, else "level with"."""
    def sem(row):
        n = len(row.get("fid_per_seed", [0]))
        return row.get(f"{metric}_std", 0.0) / math.sqrt(n) if n > 1 else 0.0

    diff, noise = a[metric] - b[metric], 2 * math.hypot(sem(a), sem(b))
    if abs(diff) <= noise:
        return "level with"
    return "lower than" if diff < 0 else "higher than"


def glue_all(values: dict[str, object]) -> None:
    """``myst_nb.glue`` every entry without displaying it, so the book's pages can paste it (nothing where
    myst-nb is not installed, e.g. on Colab: only the book needs it)."""
    try:
        from myst_nb import glue
    except ImportError:
        return

    for key, value in values.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy/torch scalars as plain numbers
            value = value.item()
        glue(key, value, display=False)
