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


def mean(values) -> float:
    """The plain mean of a list of numbers."""
    return sum(values) / len(values)


def floor_summary(floor: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``experiments.data_floor``'s draws per space, averaged: the data's own FID between halves ("floor"),
    the model's at the same sample sizes ("model") and their ratio."""
    return {s: {"floor": mean(f["floor"]), "model": mean(f["model"]), "ratio": mean(f["model"]) / mean(f["floor"])}
            for s, f in floor.items()}


def floor_table(summary: dict[str, dict[str, float]], many_steps: int) -> pd.DataFrame:
    """A ``floor_summary`` as the table chapter 3 shows, one column per space."""
    rows = ("two halves of the real data", f"base model, {many_steps} steps, vs a half", "ratio")
    return pd.DataFrame({f"FID ({s})": dict(zip(rows, (v["floor"], v["model"], v["ratio"])))
                         for s, v in summary.items()}).round(2)


def gaps(base: dict, tuned: dict, many: dict, spaces, budgets) -> dict[str, dict[int, float]]:
    """``gap_closed`` per space and budget: ``base[b]`` and ``tuned[b]`` are score rows by space at budget b,
    ``many`` the base model's rows by space at the many-step budget."""
    return {s: {b: gap_closed(base[b][s]["fid"], tuned[b][s]["fid"], many[s]["fid"]) for b in budgets}
            for s in spaces}


def ratio(new: float, old: float) -> float:
    """How many times ``old`` ``new`` is (new / old)."""
    return new / old


def relative_change(new: float, old: float) -> float:
    """new / old - 1: below 0 is lower (better, for FID)."""
    return ratio(new, old) - 1


def best(rows: dict[str, dict], metric: str = "fid") -> str:
    """The name of the row (score rows by name) with the lowest ``metric``."""
    return min(rows, key=lambda name: rows[name][metric])


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


def own_space_verdict(comparisons: list[str]) -> str:
    """Table 5's reading in words: in each measuring space, does the model optimised there score lowest?
    ``comparisons``: ``compare`` of that model against each other model, in each space."""
    if set(comparisons) == {"lower than"}:
        return "the model optimised there scores lowest"
    if "higher than" not in comparisons:
        return "the model optimised there scores lowest or level with the other (within the spread over seeds)"
    return "the model optimised there does not always score lowest"

