"""Numbers and words for the pages, each computed from results by a function (never typed, never derived
in a notebook cell)."""
import math

import pytest

from mmdlib import analysis, toy
from mmdlib.report import (best, compare, floor_summary, floor_table, gap_closed, gaps, own_space_verdict, ratio,
                           relative_change)


def row(fid, std=0.0, seeds=3):
    return {"fid": fid, "fid_std": std, "fid_per_seed": [fid] * seeds}


def test_gaps_ratios_and_changes():
    assert gap_closed(20.0, 2.0, 1.0) == pytest.approx(18 / 19) and math.isnan(gap_closed(1.0, 0.5, 2.0))
    base, tuned, many = {5: {"s": row(20.0)}, 10: {"s": row(5.0)}}, {5: {"s": row(2.0)}, 10: {"s": row(3.0)}}, \
        {"s": row(1.0)}
    assert gaps(base, tuned, many, ["s"], [5, 10]) == {"s": {5: pytest.approx(18 / 19), 10: pytest.approx(0.5)}}
    assert ratio(3.0, 2.0) == 1.5 and relative_change(3.0, 2.0) == pytest.approx(0.5)
    assert relative_change(1.0, 4.0) == -0.75


def test_the_data_floor_summary_and_its_table():
    floor = {"b": {"floor": [1.0, 3.0], "model": [4.0, 6.0]}}
    assert floor_summary(floor) == {"b": {"floor": 2.0, "model": 5.0, "ratio": 2.5}}
    t = floor_table(floor_summary(floor), 100)
    assert t.loc["base model, 100 steps, vs a half", "FID (b)"] == 5.0 and t.loc["ratio", "FID (b)"] == 2.5


def test_comparisons_say_only_what_the_spread_supports():
    assert compare(row(1.0, 0.1), row(2.0, 0.1)) == "lower than"
    assert compare(row(2.0, 0.1), row(1.0, 0.1)) == "higher than"
    assert compare(row(1.0, 1.0), row(1.2, 1.0)) == "level with"
    assert best({"a": row(3.0), "b": row(1.0), "c": row(2.0)}) == "b"


def test_verdicts_in_words():
    assert own_space_verdict(["lower than", "lower than"]) == "the model optimised there scores lowest"
    assert "level with" in own_space_verdict(["lower than", "level with"])
    assert "does not always" in own_space_verdict(["higher than", "lower than"])
    assert analysis.copying_verdict(0.1).startswith("no closer") and "copying" in analysis.copying_verdict(0.5)
    assert toy.ring_verdict(0.05, 0.04) == "about as tightly as the data"
    assert toy.ring_verdict(0.2, 0.04).startswith("closer than before")
