"""The book's plan (book/plan.py): it reads each chapter's parameters as papermill does, orders work by the
longest chain that waits on it, runs tasks after what they need on single-threaded workers and names a task
that fails. That the plan covers every cache entry the notebooks compute is checked on the smoke book
(tests/test_book.py)."""
import importlib.util
import json
import sys
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def plan():
    sys.path.insert(0, str(ROOT / "book"))  # as book/build.py does, for the workers too
    spec = importlib.util.spec_from_file_location("plan", ROOT / "book" / "plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["plan"] = module
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(ROOT / "book"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_chapters_parameters_are_its_parameters_cells_as_papermill_reads_them(plan, path):
    ours = plan.defaults(path)
    theirs = papermill.inspect_notebook(str(path))
    assert set(ours) == set(theirs)
    assert all(ours[k] == eval(v["default"]) for k, v in theirs.items())  # papermill gives the source text


def test_every_chapter_has_a_plan_and_chapters_share_their_common_runs(plan):
    assert set(plan.CHAPTERS) == {p.stem for p in NOTEBOOKS}
    tasks = plan.chapter_tasks(ROOT / "notebooks")
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    finetunes = [t for t in tasks if t.call == "finetune"]
    # chapter 2's run is chapter 3's first and chapter 6's DDIM one; the 5-step ablation with the defaults is one
    assert len(finetunes) == 16
    known = set(names)
    assert all(set(t.after) <= known for t in tasks)  # every task's prerequisites are planned
    # a score waits on its finetune and on the reference features of its spaces
    score = next(t for t in tasks if t.call == "scores" and t.args[0] == finetunes[0].args[0])
    assert finetunes[0].name in score.after and {"reference digits-a", "reference digits-b"} <= set(score.after)


def test_the_longest_chain_of_work_ranks_first(plan):
    T = plan.Task
    tasks = {t.name: t for t in [T("a", "toy", cost=10), T("b", "toy", cost=100),
                                 T("c", "toy", cost=50, after=("a",)), T("d", "toy", cost=5, after=("c",))]}
    ranks = plan._ranks(tasks)
    assert ranks == {"a": 65, "b": 100, "c": 55, "d": 5}


@pytest.mark.slow
def test_tasks_run_after_what_they_need_and_a_failure_is_named(plan, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMDLIB_CACHE_LOG", str(tmp_path / "log.jsonl"))
    T = plan.Task
    seconds = plan.execute([T("toy 3", "toy", (3, 0), after=("toy 2",)), T("toy 2", "toy", (2, 0))], jobs=2,
                           say=lambda line: None)
    assert set(seconds) == {"toy 2", "toy 3"}
    built = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in built] == ["toy", "toy"] and len({e["pid"] for e in built}) >= 1
    from mmdlib.config import EvalConfig

    with pytest.raises(RuntimeError, match="'reference nowhere' failed: MMDLibError: unknown feature space"):
        plan.execute([T("reference nowhere", "reference", (EvalConfig(), "nowhere"))], jobs=1, say=lambda line: None)
