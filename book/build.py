"""Build the book: stage its sources in ``_build/src`` (``book/``, ``_toc.yml``, ``references.bib`` and a
``_config.yml`` whose footer shows mmdlib's version); compute every cached result the chapters need
(``book/plan.py``: finetunes, scores, reference features) on a pool of single-threaded workers, the longest
chain of work first; execute every notebook in ``notebooks/`` with papermill (its default parameters;
``MMDLIB_SMOKE=1`` shrinks them to seconds) on the warm cache, one thread each and as many at a time as there
are workers, into ``_build/src/notebooks/``; write the build report page (``book/build_report.md`` there: the
plan's and each chapter's time, the machine, the package versions, the date and the commit); then build the
HTML into ``_build/html`` with Jupyter Book in strict mode (warnings are errors). Each chapter's page thus has
the path of its source in the repository, which the theme's Colab and download buttons use. Results are
cached under ``$MMDLIB_CACHE``, so a rebuild reruns the notebooks without retraining. One thread per
computation makes the book's numbers the same whatever the machine's thread count.

    python book/build.py [--root DIR] [--skip-html] [--jobs N]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

REPORT = "build_report.md"  # the page every build writes into the staged book/ (not a file in the repository)
TIMES = "chapter_times.json"  # the last build's chapter times, which order the next build's chapters
UNPLANNED = "unplanned.jsonl"  # the cache entries the notebooks computed themselves (the plan should leave none)
LONGEST = ("7_learned_timesteps",)  # the longest chapter on the plan's warm cache (it times finetune iterations)
PACKAGES = ("mmdlib", "torch", "torchvision", "diffusers", "torch-fidelity", "open_clip_torch", "accelerate",
            "numpy", "scikit-learn", "papermill", "jupyter-book", "myst-nb")


def stage(root: Path) -> Path:
    """``_build/src``, afresh: the pages, the table of contents, the bibliography, the config with the
    version in its footer, and an empty notebooks/ for the executed chapters."""
    import yaml

    import mmdlib

    src = root / "_build" / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns("*.ipynb", "*.py", "__pycache__"))
    for name in ("_toc.yml", "references.bib"):
        shutil.copy(root / name, src / name)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("html", {})["extra_footer"] = f"<p>mmdlib {mmdlib.__version__} · built from {commit(root)}</p>"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    (src / "notebooks").mkdir()
    return src


def chapter_order(root: Path, notebooks: list[Path]) -> list[Path]:
    """The notebooks, longest first, so that parallel workers finish together: by the previous build's
    times (``_build/chapter_times.json``) when there are some, else the longest chapter on a warm cache
    (``LONGEST``) first and then the others in order."""
    record = root / "_build" / TIMES
    times = json.loads(record.read_text()) if record.exists() else {}
    if set(times) >= {nb.stem for nb in notebooks}:
        return sorted(notebooks, key=lambda nb: -times[nb.stem])
    return sorted(notebooks, key=lambda nb: (LONGEST.index(nb.stem) if nb.stem in LONGEST else len(LONGEST), nb.stem))


def compute_plan(root: Path, jobs: int) -> tuple[int, float]:
    """Compute every cached result the chapters need (``plan.py``) on ``jobs`` single-threaded workers, the
    longest chain of work first; returns the number of tasks done and the wall seconds."""
    import plan

    tasks = plan.chapter_tasks(root / "notebooks")
    print(f"computing the chapters' {len(tasks)} cached results, {jobs} at a time (one thread each) ...", flush=True)
    t0 = time.perf_counter()
    try:
        seconds = plan.execute(tasks, jobs, say=lambda line: print(line, flush=True))
    except RuntimeError as e:
        sys.exit(f"the book's plan failed: {e}")
    return len(seconds), time.perf_counter() - t0  # with the tasks that others added (chapter 7's)


def unplanned(log: Path) -> list[str]:
    """The cache entries (kind/key) the notebooks computed themselves: what the plan left out."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [f"{e['kind']}/{e['key']}" for e in map(json.loads, lines)]


def execute_notebooks(root: Path, src: Path, jobs: int = 1) -> dict[str, float]:
    """Execute each notebook of notebooks/ into src/notebooks/ with papermill (run from notebooks/, as a reader
    would), ``jobs`` at a time, each kernel on one thread (so that what a chapter computes is the same on every
    machine); returns each notebook's execution time in seconds, in chapter order. Each cache entry a notebook
    computes is logged in ``_build/logs/unplanned.jsonl``."""
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    logs = root / "_build" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / UNPLANNED).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MMDLIB_CACHE_LOG=str(logs / UNPLANNED))

    def run(nb: Path) -> tuple[float, int]:
        out, log = src / "notebooks" / nb.name, logs / f"{nb.stem}.log"
        print(f"executing {nb.relative_to(root)} ...", flush=True)
        t0 = time.perf_counter()
        with log.open("w") as f:
            rc = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(out), "--cwd", str(nb.parent),
                                 "--kernel", "python3", "--no-progress-bar"], stdout=f, stderr=subprocess.STDOUT,
                                env=env).returncode
        seconds = time.perf_counter() - t0
        print(f"  {nb.stem} {'done' if rc == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)
        return seconds, rc

    order = chapter_order(root, notebooks)
    with ThreadPoolExecutor(jobs) as pool:
        done = dict(zip(order, pool.map(run, order)))
    failed = [nb for nb, (_, rc) in done.items() if rc]
    if failed:
        tails = "\n".join(f"--- {nb.name} (log: {logs / (nb.stem + '.log')}; the partly executed notebook is "
                          f"{src / 'notebooks' / nb.name}):\n" + "\n".join(
                              (logs / f"{nb.stem}.log").read_text().splitlines()[-15:]) for nb in failed)
        sys.exit(f"{len(failed)} chapter(s) failed:\n{tails}")
    times = {nb.stem: done[nb][0] for nb in notebooks}
    (root / "_build" / TIMES).write_text(json.dumps(times))
    return times


def machine() -> dict[str, str]:
    """The CPU model and core count, and the GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    out = {"CPU": f"{cpu} ({os.cpu_count()} logical cores)", "OS": platform.platform(),
           "Python": platform.python_version()}
    import torch

    out["GPU"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return out


def commit(root: Path) -> str:
    """The commit the book was built from, marked when the working tree had changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_report(root: Path, src: Path, times: dict[str, float], jobs: int = 1, wall: float | None = None,
                 planned: tuple[int, float] | None = None, missed: list[str] = ()) -> Path:
    """src/book/build_report.md: what built the book, where, how long its plan and each chapter took."""
    from mmdlib.cache import cache_dir, smoke_test

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    rows = "\n".join(f"| {name} | {seconds:,.0f} |" for name, seconds in times.items())
    lines = [
        "# Build report", "",
        "Written by `book/build.py` when it built this book; nothing on this page is typed by hand. Chapter",
        "times are papermill's execution of each notebook with its default parameters, with whatever the",
        "cache (`$MMDLIB_CACHE`) held at the start: a warm cache only loads trained models and scores. The",
        "HTML build that follows is not included.", "",
        *([f"- cached results (book/plan.py): {planned[0]} tasks on {jobs} single-threaded workers, {planned[1]:,.0f} s "
           f"({planned[1] / 60:.0f} min); the notebooks computed {len(missed)} entries beyond them"] if planned else []),
        f"- notebooks: {jobs} at a time" + (f", {wall:,.0f} s from the first one's start to the last one's end ({wall / 60:.0f} min)"
                                           if wall is not None else ""),
        f"- built: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: `{commit(root)}`",
        f"- mode: {'smoke (MMDLIB_SMOKE=1: tiny models, meaningless numbers)' if smoke_test() else 'full'}",
        f"- cache: `{cache_dir()}`", "",
        "## Chapters", "", "| notebook | execution (s) |", "|---|---:|", rows,
        f"| **sum** | **{sum(times.values()):,.0f}** |", "",
        "## Machine", "", *(f"- {k}: {v}" for k, v in machine().items()), "",
        "## Packages", "", "| package | version |", "|---|---|",
        *(f"| {name} | {version(name)} |" for name in PACKAGES), ""]
    path = src / "book" / REPORT
    path.write_text("\n".join(lines))
    return path


def build_html(root: Path, src: Path) -> None:
    """Jupyter Book over the staged sources, HTML into root/_build/html."""
    jb = Path(sys.executable).with_name("jupyter-book")
    # --all: pages paste values glued in other pages' notebooks (results.md), a dependency Sphinx's incremental
    # build does not track, so an unchanged page would keep the numbers of the previous build
    subprocess.run([str(jb), "build", str(src), "--path-output", str(root), "--all", "--warningiserror",
                    "--keep-going"], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the book's root (with _config.yml, _toc.yml, notebooks/ and book/)")
    p.add_argument("--skip-html", action="store_true", help="only execute the notebooks (and write the report)")
    p.add_argument("--jobs", type=int, default=None,
                   help="workers for the cached results, and chapters executed at a time, each on one thread "
                        "(default: the machine's physical cores)")
    args = p.parse_args()
    if args.jobs is None:
        from mmdlib.cores import machine_threads

        args.jobs = machine_threads()
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    t0 = time.perf_counter()
    src = stage(args.root)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # plan.py, for this process and its workers
    planned = compute_plan(args.root, args.jobs)
    t1 = time.perf_counter()
    times = execute_notebooks(args.root, src, args.jobs)
    missed = unplanned(args.root / "_build" / "logs" / UNPLANNED)
    if missed:
        print(f"warning: the notebooks computed {len(missed)} cache entries the plan (book/plan.py) does not list, "
              f"on one core each: {', '.join(missed[:10])}", file=sys.stderr)
    write_report(args.root, src, times, args.jobs, time.perf_counter() - t1, planned, missed)
    if not args.skip_html:
        build_html(args.root, src)
    print(f"book built in {time.perf_counter() - t0:.0f} s: {args.root / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
