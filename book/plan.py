"""The book's cached computations, planned: every finetune, score, data floor, reference-feature set and toy model
the chapters ask ``mmdlib.experiments`` for with their default parameters, as tasks that ``book/build.py`` runs
before the notebooks on a pool of single-threaded worker processes, the longest chain of work first. The
notebooks then find every entry in the cache.

A task computes its entry by the very call its notebook makes (the same function, the same settings, the
parameters read from the notebook's own parameters cell), so the entry under its key is the one the notebook
would have computed; ``build.py`` logs every entry the notebooks still compute (``MMDLIB_CACHE_LOG``) and
names any the plan left out. One thread per worker makes every result the same whatever the machine's
thread count (a finetune's weights change in their last bits with it: issue 28).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Task:
    """One cached computation: ``call`` (a function of this module) with ``args``, after the tasks ``after``;
    ``cost`` is its estimated seconds on one thread, which orders the work."""

    name: str
    call: str
    args: tuple = ()
    cost: float = 1.0
    after: tuple[str, ...] = ()


def defaults(notebook: Path) -> dict:
    """The values of a notebook's parameters cell (the cell tagged ``parameters``: plain assignments)."""
    nb = json.loads(Path(notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


# --- what the workers run (each as the notebooks call it) ---

def _settings(preset: str):
    from mmdlib import smoke_test
    from mmdlib.presets import settings

    return settings(preset, smoke_test())


def _run(spec):
    """A base model's name, or a finetune's config: the notebook's ``ex.base(...)`` or ``ex.finetuned(...)``."""
    from mmdlib import experiments as ex

    return ex.base(spec) if isinstance(spec, str) else ex.finetuned(spec, progress=False)


def toy(iterations: int, seed: int) -> None:
    from mmdlib import toy

    toy.trained_toy(toy.toy_data(4000, seed=seed), iterations=iterations, seed=seed)


def reference(ev, space: str) -> None:
    from mmdlib.data import data_options
    from mmdlib.evaluate import reference_features

    reference_features(ev.dataset, ev.split, space, **data_options(ev.dataset, ev.data_root))


def finetune(cfg) -> None:
    _run(cfg)


def scores(spec, ev, settings: dict) -> None:
    from mmdlib import experiments as ex

    ex.scores(_run(spec), ev, progress=False, **settings)


def floor(spec, ev, budget: int, spaces: tuple) -> None:
    from mmdlib import experiments as ex

    ex.data_floor(_run(spec), budget, ev.dataset, ev.split, spaces, data_root=ev.data_root)


def learnt_timesteps(preset: str, budgets: list, samplers: list) -> list[Task]:
    """Chapter 7's runs, which depend on chapter 6's results: timesteps learnt for DDIM and for the solver that
    finetuned best (its ``solver`` and ``chains``), alone and with the weights."""
    from mmdlib import experiments as ex
    from mmdlib.report import best

    s = _settings(preset)
    ev, few, (_, measure) = s.evaluation, budgets[0], s.spaces
    tuned = {sp: ex.scores(_run(s.finetune_at(few, sampler=sp)), ev, budgets=[few], sampler=sp, progress=False)[few]
             for sp in samplers}
    solver = best({sp: tuned[sp][measure] for sp in samplers[1:] or samplers})
    tasks = []
    for mode in ("alone", "joint"):
        for sp in dict.fromkeys([samplers[0], solver]):
            for b in budgets:
                cfg = s.finetune_at(b, sampler=sp, learn_timesteps=True, freeze_weights=mode == "alone")
                tasks += _finetune_and_scores(cfg, ev, [(b, {"sampler": sp})])
    return tasks


# --- the plan ---

def _finetune_cost(cfg) -> float:
    """Seconds on one thread, roughly: about 0.2 s per iteration and step at the digits preset's batch."""
    return 0.2 * cfg.iterations * cfg.budget * cfg.batch_size / 128 * (0.7 if cfg.freeze_weights else 1.0)


def _score_cost(ev, budget: int, spaces: int) -> float:
    """Seconds on one thread for one evaluation seed: sampling plus each space's embedding, roughly."""
    return ev.n * (budget / 2000 + spaces / 4000)


def _name(spec) -> str:
    if isinstance(spec, str):
        return spec
    from mmdlib.cache import config_key

    return f"finetune {spec.sampler} {spec.budget} {config_key(dataclasses.asdict(spec))}"


def _scores(spec, ev, budget: int, settings: dict) -> list[Task]:
    """``ex.scores(run, ev, **settings)`` for one budget, a task per evaluation seed (each its own entries)."""
    seeds = settings.pop("seeds", ev.seeds)
    seeds = range(seeds) if isinstance(seeds, int) else seeds
    settings = {k: v for k, v in settings.items() if v != getattr(ev, k, None)}  # as the defaults: the same entries
    spaces = settings.get("features", ev.features)
    if sorted(spaces) == sorted(ev.features):
        settings.pop("features", None)
    after = tuple(f"reference {space}" for space in spaces) + (() if isinstance(spec, str) else (_name(spec),))
    return [Task(f"scores {_name(spec)} {budget} {json.dumps(settings, sort_keys=True)} seed {seed}", "scores",
                 (spec, ev, {**settings, "budgets": [budget], "seeds": [seed]}),
                 _score_cost(ev, budget, len(spaces)), after) for seed in seeds]


def _finetune_and_scores(cfg, ev, scored: list[tuple[int, dict]]) -> list[Task]:
    return [Task(_name(cfg), "finetune", (cfg,), _finetune_cost(cfg))] + [
        t for b, settings in scored for t in _scores(cfg, ev, b, dict(settings))]


def _theory(p: dict, smoke: bool) -> list[Task]:
    return [Task("toy", "toy", (50 if smoke else p["toy_train_iterations"], p["seed"]), 60)]


def _finetuning(p: dict, smoke: bool) -> list[Task]:
    s = _settings(p["preset"])
    ev, few = s.evaluation, s.finetune.budget
    return _finetune_and_scores(s.finetune, ev, [(few, {})]) + _scores(s.finetune.model, ev, few, {})


def _evaluation(p: dict, smoke: bool) -> list[Task]:
    s = _settings(p["preset"])
    ev, base, (features, measure), budgets = s.evaluation, s.finetune.model, s.spaces, list(s.evaluation.budgets)
    spaces = [features, measure] + (["inception-spatial"] if "inception" in s.spaces else [])
    tasks = [t for b in budgets for t in _scores(base, ev, b, {"features": spaces})]
    tasks += _scores(base, ev, s.many_steps, {"features": spaces, "seeds": s.many_steps_seeds})
    tasks.append(Task(f"floor {s.many_steps}", "floor", (base, ev, s.many_steps, (measure, features)),
                      _score_cost(ev, s.many_steps, 2) * 3, tuple(f"reference {sp}" for sp in (measure, features))))
    for b in budgets:
        tasks += _finetune_and_scores(s.finetune_at(b), ev, [(b, {"features": spaces})])
    return tasks + [t for b in budgets for t in _scores(s.finetune_at(budgets[0]), ev, b,
                                                        {"features": spaces, "seeds": 1})]


def _feature_spaces(p: dict, smoke: bool) -> list[Task]:
    s = _settings(p["preset"])
    few, iterations = s.finetune.budget, 2 if smoke else p["space_iterations"]
    return [t for space in s.spaces for t in _finetune_and_scores(
        s.finetune_at(few, features=space, iterations=iterations), s.evaluation, [(few, {})])]


def _ablations(p: dict, smoke: bool) -> list[Task]:
    from mmdlib import KERNELS

    s = _settings(p["preset"])
    few, ev = s.finetune.budget, s.evaluation
    common = s.finetune_at(few, iterations=2 if smoke else p["ablation_iterations"])
    tasks = []
    for change in ([{"kernel": k} for k in KERNELS] + [{"timestep_spacing": sp} for sp in ("linear", "quadratic")]
                   + [{"sampler": sp} for sp in ("ddpm", "ddim")]):
        sampling = {k: v for k, v in change.items() if k != "kernel"}
        tasks += _finetune_and_scores(dataclasses.replace(common, **change), ev, [(few, sampling)])
        tasks += _scores(s.finetune.model, ev, few, dict(sampling))
    return tasks


def _solvers(p: dict, smoke: bool) -> list[Task]:
    """Chapter 6's and chapter 7's common part: each sampler training-free and finetuned at each budget."""
    s = _settings(p["preset"])
    ev, tasks = s.evaluation, []
    for sp in p["samplers"]:
        tasks += [t for b in p["budgets"] for t in _scores(s.finetune.model, ev, b, {"sampler": sp})]
        for b in p["budgets"]:
            tasks += _finetune_and_scores(s.finetune_at(b, sampler=sp), ev, [(b, {"sampler": sp})])
    return tasks


def _beyond_ddim(p: dict, smoke: bool) -> list[Task]:
    s = _settings(p["preset"])
    few, at = p["budgets"][0], {"sampler": p["samplers"][0], "timestep_spacing": "trailing"}
    trailing = s.finetune_at(few, sampler=p["samplers"][0], timestep_spacing="trailing")
    return (_solvers(p, smoke) + _finetune_and_scores(trailing, s.evaluation, [(few, at)])
            + _scores(s.finetune.model, s.evaluation, few, dict(at)))


def _learned_timesteps(p: dict, smoke: bool) -> list[Task]:
    s = _settings(p["preset"])
    ev, few, budgets = s.evaluation, p["budgets"][0], p["budgets"]
    needs = tuple(t.name for sp in p["samplers"]
                  for t in _scores(s.finetune_at(few, sampler=sp), ev, few, {"sampler": sp}))
    guess = 4 * sum(_finetune_cost(s.finetune_at(b)) for b in budgets)  # its 8 runs, roughly
    return (_solvers(p, smoke) + _scores(s.finetune.model, ev, s.many_steps, {"seeds": s.many_steps_seeds})
            + [Task("chapter 7's learnt timesteps", "learnt_timesteps", (p["preset"], budgets, p["samplers"]),
                    guess, needs)])


# each chapter's computations, from its notebook's parameters (MMDLIB_SMOKE shrinks them as the notebook does)
CHAPTERS = {"1_theory": _theory, "2_finetuning": _finetuning, "3_evaluation": _evaluation,
            "4_feature_spaces": _feature_spaces, "5_ablations": _ablations, "6_beyond_ddim": _beyond_ddim,
            "7_learned_timesteps": _learned_timesteps}


def chapter_tasks(notebooks: Path) -> list[Task]:
    """The tasks of the chapters in ``notebooks`` (those ``CHAPTERS`` knows), with the reference features of
    every space they score in; tasks with the same name (chapters share runs and scores) are one."""
    from mmdlib import smoke_test

    tasks = [t for nb in sorted(Path(notebooks).glob("*.ipynb")) if nb.stem in CHAPTERS
             for t in CHAPTERS[nb.stem](defaults(nb), smoke_test())]
    spaces = {name.split(" ", 1)[1]: t.args[1] for t in tasks for name in t.after if name.startswith("reference ")}
    tasks = [Task(f"reference {space}", "reference", (ev, space), 30) for space, ev in sorted(spaces.items())] + tasks
    return list({t.name: t for t in tasks}.values())


# --- the pool ---

def _one_thread() -> None:
    """A worker's start: one thread, set before torch (and its OpenMP) loads."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)


def _execute(task: Task) -> tuple[float, list[Task]]:
    t0 = time.perf_counter()
    out = globals()[task.call](*task.args)
    return time.perf_counter() - t0, out if isinstance(out, list) else []


def _ranks(tasks: dict[str, Task]) -> dict[str, float]:
    """Each task's cost plus the longest chain of costs that waits on it: the order that finishes soonest."""
    waiting: dict[str, list[str]] = {name: [] for name in tasks}
    for t in tasks.values():
        for a in t.after:
            waiting.setdefault(a, []).append(t.name)
    ranks: dict[str, float] = {}

    def rank(name: str) -> float:
        if name not in ranks:
            ranks[name] = tasks[name].cost + max((rank(w) for w in waiting[name]), default=0.0)
        return ranks[name]

    return {name: rank(name) for name in tasks}


def execute(tasks: list[Task], jobs: int, say: Callable[[str], None] = print) -> dict[str, float]:
    """Run ``tasks`` on ``jobs`` single-threaded worker processes, the highest rank first among those whose
    ``after`` are done; returns each task's seconds. A failed task stops new work (what finished stays cached)
    and raises ``RuntimeError`` naming it."""
    pending, done, seconds = {t.name: t for t in tasks}, set(), {}
    ranks = _ranks(pending)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        running: dict = {}
        failed = None
        while (pending and failed is None) or running:
            ready = sorted((t for t in pending.values() if set(t.after) <= done), key=lambda t: -ranks[t.name])
            for t in ready[:max(0, jobs - len(running))] if failed is None else []:
                running[pool.submit(_execute, t)] = pending.pop(t.name)
            if not running:
                raise RuntimeError(f"tasks waiting on tasks that are not in the plan: {sorted(pending)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                t = running.pop(future)
                try:
                    seconds[t.name], new = future.result()
                except Exception as e:  # noqa: BLE001 (reported with the task's name; the build stops)
                    failed = failed or RuntimeError(f"the cached computation {t.name!r} failed: "
                                                    f"{type(e).__name__}: {e}")
                    continue
                done.add(t.name)
                new = [n for n in new if n.name not in done and n.name not in pending and n.name not in
                       {r.name for r in running.values()}]
                pending.update({n.name: n for n in new})
                ranks = _ranks(pending | {r.name: r for r in running.values()})
                say(f"  {t.name}: {seconds[t.name]:.0f} s ({len(done)} done, {len(pending) + len(running)} to go)")
        if failed:
            raise failed
    return seconds
