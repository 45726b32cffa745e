"""benchmarks/compare_caches.py, which RESULTS' reproduction claims rest on: equal entries pass, wall times and
machine paths are not results, and any other difference or a missing entry is named."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_caches  # noqa: E402


def entry(root: Path, name: str, seconds: str = "0.5", out: str = "/a", fid: float = 2.41, weights: bytes = b"w"):
    e = root / "finetuned" / name
    (e / "finetuned").mkdir(parents=True)
    (e / "log.csv").write_text(f"iteration,loss,seconds\n0,0.1,{seconds}\n")
    (e / "finetuned" / "mmdlib.json").write_text(json.dumps({"finetune": {"out": out, "lr": 5e-6}}))
    (e / "finetuned" / "weights.safetensors").write_bytes(weights)
    s = root / "scores" / name
    s.mkdir(parents=True)
    (s / "scores.json").write_text(json.dumps({"fid": fid}))


def test_equal_entries_pass_whatever_their_wall_times_and_paths(tmp_path):
    entry(tmp_path / "old", "k1")
    entry(tmp_path / "new", "k1", seconds="9.9", out="/elsewhere")
    (tmp_path / "new" / "runs" / "unfinished").mkdir(parents=True)  # a work folder, not an entry
    counts, problems = compare_caches.compare(tmp_path / "old", tmp_path / "new")
    assert problems == [] and counts[("finetuned", "same")] == 1 and counts[("scores", "same")] == 1


def test_a_changed_result_and_a_missing_entry_are_named(tmp_path):
    entry(tmp_path / "old", "k1")
    entry(tmp_path / "new", "k1", fid=2.41 * (1 + 1e-8), weights=b"x")
    entry(tmp_path / "new", "k2")
    counts, problems = compare_caches.compare(tmp_path / "old", tmp_path / "new")
    assert counts[("finetuned", "differ")] == 1 and counts[("scores", "differ")] == 1
    assert counts[("finetuned", "missing")] == 1 and counts[("scores", "missing")] == 1
    text = "\n".join(problems)
    assert "finetuned/k1: finetuned/weights.safetensors differ" in text
    assert "scores/k1: scores.json (numbers, at most 1.0e-08 relative) differ" in text
    assert "finetuned/k2: not in" in text
    assert compare_caches.main(tmp_path / "old", tmp_path / "new") == 1
