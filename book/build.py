"""Build the book: stage its sources in ``_build/src`` (``book/``, ``_toc.yml``, ``references.bib`` and a
``_config.yml`` whose footer shows mmdlib's version), execute every notebook in ``notebooks/`` with
papermill (its default parameters; ``MMDLIB_SMOKE=1`` shrinks them to seconds) into
``_build/src/notebooks/``, write the build report page (``book/build_report.md`` there: each chapter's
execution time, the machine, the package versions, the date and the commit), then build the HTML into
``_build/html`` with Jupyter Book in strict mode (warnings are errors). Each chapter's page thus has the
path of its source in the repository, which the theme's Colab and download buttons use. Results are
cached under ``$MMDLIB_CACHE``, so a rebuild reruns the notebooks without retraining.

    python book/build.py [--root DIR] [--skip-html]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPORT = "build_report.md"  # the page every build writes into the staged book/ (not a file in the repository)
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


def execute_notebooks(root: Path, src: Path) -> dict[str, float]:
    """Execute each notebook of notebooks/ into src/notebooks/ (run from notebooks/, as a reader would); returns
    its execution time in seconds, by notebook name."""
    import papermill as pm

    times = {}
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        t0 = time.perf_counter()
        print(f"executing {nb.relative_to(root)} ...", flush=True)
        out = src / "notebooks" / nb.name
        try:
            pm.execute_notebook(nb, out, cwd=root / "notebooks", kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as e:
            sys.exit(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                     f"(the partly executed notebook is {out})")
        times[nb.stem] = time.perf_counter() - t0
        print(f"  done in {times[nb.stem]:.0f} s", flush=True)
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


def write_report(root: Path, src: Path, times: dict[str, float]) -> Path:
    """src/book/build_report.md: what built the book, where, and how long each chapter took."""
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
        f"- built: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: `{commit(root)}`",
        f"- mode: {'smoke (MMDLIB_SMOKE=1: tiny models, meaningless numbers)' if smoke_test() else 'full'}",
        f"- cache: `{cache_dir()}`", "",
        "## Chapters", "", "| notebook | execution (s) |", "|---|---:|", rows,
        f"| **all** | **{sum(times.values()):,.0f}** |", "",
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
    args = p.parse_args()
    t0 = time.perf_counter()
    src = stage(args.root)
    write_report(args.root, src, execute_notebooks(args.root, src))
    if not args.skip_html:
        build_html(args.root, src)
    print(f"book built in {time.perf_counter() - t0:.0f} s: {args.root / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
