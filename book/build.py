"""Build the book: execute every notebook in ``notebooks/`` with papermill (its default parameters;
``MMDLIB_SMOKE=1`` shrinks them to seconds) into ``book/``, then build the HTML with Jupyter Book in
strict mode (warnings are errors). Results are cached under ``$MMDLIB_CACHE``, so a rebuild reruns the
notebooks without retraining.

    python book/build.py [--root DIR] [--skip-html]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def execute_notebooks(root: Path) -> None:
    import papermill as pm

    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        t0 = time.perf_counter()
        print(f"executing {nb.relative_to(root)} ...", flush=True)
        try:
            pm.execute_notebook(nb, root / "book" / nb.name, cwd=root / "notebooks", kernel_name="python3",
                                progress_bar=False)
        except pm.PapermillExecutionError as e:
            sys.exit(f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                     f"(the partly executed notebook is {root / 'book' / nb.name})")
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)


def build_html(root: Path) -> None:
    jb = Path(sys.executable).with_name("jupyter-book")
    # --all: pages paste values glued in other pages' notebooks (results.md), a dependency Sphinx's incremental
    # build does not track, so an unchanged page would keep the numbers of the previous build
    subprocess.run([str(jb), "build", str(root), "--all", "--warningiserror", "--keep-going"], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the book's root (with _config.yml, _toc.yml, notebooks/ and book/)")
    p.add_argument("--skip-html", action="store_true", help="only execute the notebooks")
    args = p.parse_args()
    t0 = time.perf_counter()
    execute_notebooks(args.root)
    if not args.skip_html:
        build_html(args.root)
    print(f"book built in {time.perf_counter() - t0:.0f} s: {args.root / '_build' / 'html' / 'index.html'}")


if __name__ == "__main__":
    main()
