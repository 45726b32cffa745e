"""The notebooks and the book: every notebook runs in smoke mode under papermill (through the book's
build: every code cell executed, no error output); the book builds strictly; a real browser (Debian's
chromium driven by playwright) opens every page of the table of contents and finds every image, every
internal link and the math."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE_ENV = {**os.environ, "MMDLIB_SMOKE": "1", "HF_HUB_OFFLINE": "1"}  # MMDLIB_CACHE: the tests' fresh cache


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_the_seven_chapters():
    assert [nb.stem for nb in NOTEBOOKS] == ["1_theory", "2_finetuning", "3_evaluation", "4_feature_spaces",
                                             "5_ablations", "6_beyond_ddim", "7_learned_timesteps"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_sources_have_a_hidden_install_cell_pinning_this_release_parameters_and_no_outputs(path):
    import mmdlib

    nb = nbformat.read(path, as_version=4)
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.stem[0]}. ")
    # the theme's launch buttons link to Colab, from _config.yml's repository: no hand-written link to go stale
    assert not any("colab.research.google.com" in c.source for c in nb.cells)
    install = nb.cells[1]
    assert install.cell_type == "code" and 'if "google.colab" in sys.modules:' in install.source
    assert f'"-m", "pip", "install", "-q",\n                    "mmdlib[metrics] @ git+{url}@v{mmdlib.__version__}"' \
        in install.source  # the release that builds the book, from the one repository setting
    assert install.metadata.get("tags") == ["remove-cell"]  # not shown in the book
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "mmdlib.smoke_test()" in nb.cells[params[0] + 1].source
    assert all(not c.outputs and c.execution_count is None for c in code_cells(nb)), "commit notebooks without outputs"


def test_the_table_of_contents_lists_every_notebook_and_every_chapter_exists():
    files = toc_files()
    assert all(f"notebooks/{nb.stem}" in files for nb in NOTEBOOKS)  # each chapter at its source's path
    for f in files:
        assert (ROOT / f"{f}.md").is_file() or (ROOT / f"{f}.ipynb").is_file() or f == "book/build_report", f


def _parameters(nb) -> dict:
    """A notebook's parameter values, as its parameters cell sets them."""
    import ast

    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body if isinstance(n, ast.Assign)
            for t in n.targets}


@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_notebooks_take_their_settings_from_a_preset_and_copy_none(path):
    nb = nbformat.read(path, as_version=4)
    values = _parameters(nb)
    assert values["preset"] == "digits"
    # every setting the preset holds is None (the preset's) unless given; only chapter knobs have values
    from mmdlib.presets import settings

    held = {"model", "dataset", "data_root", "features", "measure", "budget", "sampler", "iterations", "n_samples",
            "seeds", "many_steps", "many_steps_seeds", "iterations_long", "timestep_lr", "budgets"}
    assert {"model", "dataset", "data_root", "n_samples", "seeds"} <= set(values), path.name
    # chapters 6 and 7 compare samplers at budgets of their own
    assert all(values[k] is None for k in held & set(values) if not (k == "budgets" and path.stem[0] in "67"))
    src = "\n".join(c.source for c in code_cells(nb))
    assert "settings(preset, SMOKE," in src and "ex.config(" not in src
    for k in held & set(values) - {"budgets"}:  # each reaches settings() under its own name, or n for n_samples
        assert f"{'n' if k == 'n_samples' else k}={k}" in src, (path.name, k)
    settings("digits")  # the preset they name exists


def test_the_introductions_papermill_commands_pass_each_chapter_only_its_own_parameters():
    text = (ROOT / "book" / "intro.md").read_text()
    commands = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    checked = 0
    for loop, body in re.findall(r"for ch in ([\w ]+); do\n(.*?)\ndone", commands, re.S) + [
            ("", line) for line in commands.splitlines() if line.startswith("papermill notebooks/")]:
        names = loop.split() or [re.search(r"notebooks/(\w+)\.ipynb", body).group(1)]
        given = set(re.findall(r"-p (\w+) ", body)) | set(re.findall(r'-y "(\w+):', body))
        for name in names:
            declared = _parameters(nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4))
            assert given <= set(declared), f"{name} does not declare {given - set(declared)}"
            checked += 1
    assert checked >= 16  # chapters 2-5 for each of the four datasets


def test_no_measured_number_is_typed_on_the_results_page_or_in_the_chapters():
    # a decimal on these pages is pasted from an executed notebook (myst-nb glue) unless it is the paper's
    texts = {"book/results.md": (ROOT / "book" / "results.md").read_text()}
    for path in NOTEBOOKS:
        texts[path.name] = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                                      if c.cell_type == "markdown")
    for name, text in texts.items():
        for line in text.splitlines():
            prose = re.sub(r"\{glue[^`]*`[^`]*`|\$[^$]*\$", "", line)  # pasted values and math (settings)
            typed = re.findall(r"(?<![\w.`:])\d+\.\d+(?![\w`])", prose)
            assert not typed or "reported" in line or "paper" in line, f"{name}: typed {typed} in: {line}"


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory) -> Path:
    """The book's sources copied to a temporary root and built by book/build.py in smoke mode."""
    root = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    r = subprocess.run([sys.executable, str(root / "book" / "build.py"), "--root", str(root)], env=SMOKE_ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return root


def _build_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_build", ROOT / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chapters_start_longest_first(tmp_path):
    build = _build_module()
    names = ["1_a", "2_b", "3_c", "4_d", "7_learned_timesteps"]
    nbs = [tmp_path / "notebooks" / f"{n}.ipynb" for n in names]
    # no earlier build: the chapter measured longest on a warm cache, then the others in order
    assert [nb.stem for nb in build.chapter_order(tmp_path, nbs)] == ["7_learned_timesteps", "1_a", "2_b", "3_c",
                                                                      "4_d"]
    (tmp_path / "_build").mkdir()
    (tmp_path / "_build" / build.TIMES).write_text(json.dumps(dict(zip(names, [5, 30, 1, 20, 2]))))
    assert [nb.stem for nb in build.chapter_order(tmp_path, nbs)] == ["2_b", "4_d", "1_a", "7_learned_timesteps",
                                                                      "3_c"]
    # a chapter the last build did not time (a new one): the default order again
    assert build.chapter_order(tmp_path, nbs + [tmp_path / "notebooks" / "8_new.ipynb"])[0].stem == \
        "7_learned_timesteps"


@pytest.mark.slow
def test_a_failing_chapter_is_named_with_its_error_after_the_others_finish(tmp_path):
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("*.ipynb", "__pycache__"))
    (tmp_path / "notebooks").mkdir()
    for name, code in (("1_ok", "x = 1"), ("2_bad", "raise ValueError('chapter two broke')"), ("3_ok", "y = 2")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / "notebooks" / f"{name}.ipynb")
    r = subprocess.run([sys.executable, str(tmp_path / "book" / "build.py"), "--root", str(tmp_path), "--jobs", "2",
                        "--skip-html"], env=SMOKE_ENV, capture_output=True, text=True)
    assert r.returncode != 0
    assert "1 chapter(s) failed" in r.stderr and "2_bad.ipynb" in r.stderr and "chapter two broke" in r.stderr
    for name in ("1_ok", "3_ok"):  # the others ran to the end
        assert not nbformat.read(tmp_path / "_build" / "src" / "notebooks" / f"{name}.ipynb", 4).metadata[
            "papermill"]["exception"]
    assert not (tmp_path / "_build" / "chapter_times.json").exists()  # a failed build does not order the next


@pytest.mark.slow
def test_the_plan_computes_every_cache_entry_the_notebooks_ask_for(smoke_book):
    # book/plan.py ran first from an empty cache; had a notebook computed an entry itself (a parameter the plan
    # does not mirror), the cache log would name it
    log = smoke_book / "_build" / "logs" / "unplanned.jsonl"
    assert not log.exists() or not log.read_text().strip(), log.read_text()
    report = (smoke_book / "_build" / "src" / "book" / "build_report.md").read_text()
    assert re.search(r"cached results \(book/plan.py\): \d+ tasks on \d+ single-threaded workers", report)
    assert "the notebooks computed 0 entries beyond them" in report


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_executes_under_papermill(smoke_book, path):
    nb = nbformat.read(smoke_book / "_build" / "src" / "notebooks" / path.name, as_version=4)
    assert not nb.metadata["papermill"]["exception"]
    cells = code_cells(nb)
    assert all(c.execution_count is not None for c in cells)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), "every chapter has a figure"


@pytest.mark.slow
def test_the_book_builds_strictly_with_a_page_per_chapter(smoke_book):
    html = smoke_book / "_build" / "html"
    for f in toc_files():
        assert (html / f"{f}.html").is_file(), f
    # executed notebooks are rendered from their outputs, figures included as image files
    page = (html / "notebooks" / "2_finetuning.html").read_text()
    assert re.search(r'<img[^>]+src="\.\./_images/[0-9a-f]+\.png"', page)
    # launch and download buttons, from _config.yml's repository; the Colab install cell is not shown
    import mmdlib

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    repo = urlparse(url).path.strip("/")
    assert f'href="https://colab.research.google.com/github/{repo}/blob/main/notebooks/2_finetuning.ipynb"' in page
    assert 'href="../_sources/notebooks/2_finetuning.ipynb"' in page and f'href="{url}"' in page
    assert "google.colab" not in page and f"mmdlib {mmdlib.__version__} · built from" in page
    # the build report: every chapter's time, the machine and the versions, as the build measured them
    report = (html / "book" / "build_report.html").read_text()
    assert all(f"<td><p>{nb.stem}</p></td>" in report for nb in NOTEBOOKS) and "smoke" in report
    assert f"<td><p>{mmdlib.__version__}</p></td>" in report and "logical cores" in report
    assert re.search(r"notebooks: \d at a time, [\d,]+ s from the first", report)
    # the results page pastes the chapters' numbers and tables (a missing key fails the strict build)
    results = (html / "book" / "results.html").read_text()
    source = (ROOT / "book" / "results.md").read_text()
    assert results.count('class="pasted-text"') == source.count("{glue:text}")
    assert results.count("<table") == source.count("```{glue}")
    assert "{glue" not in results


@pytest.mark.slow
def test_every_page_in_a_real_browser(smoke_book):
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert Path(chromium).is_file(), (f"no browser at {chromium}: `make test` installs Debian's chromium "
                                      f"(apt-get install chromium), or set CHROMIUM to another chromium binary")
    html = smoke_book / "_build" / "html"
    shots = smoke_book / "_build" / "screenshots"
    shots.mkdir()
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("requestfailed", lambda r: failed.append(r.url) if r.url.startswith("file:") else None)
        for name in toc_files():
            page.goto((html / f"{name}.html").as_uri(), wait_until="load")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            images = page.evaluate("Array.from(document.images).map(i => [i.currentSrc, i.naturalWidth])")
            assert not [src for src, w in images if w == 0], f"{name}: images that did not load"
            if name.split("/")[-1][0].isdigit():  # a notebook chapter: its figures are there
                assert sum(src.endswith(".png") for src, _ in images) >= 1, name
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                if not href.startswith("file:"):
                    continue  # external links are not reachable from here
                path, _, fragment = href.partition("#")
                target = Path(unquote(urlparse(path).path))
                assert target.exists(), f"{name}: broken link {href}"
                if fragment and target.suffix == ".html":
                    assert f'id="{unquote(fragment)}"' in target.read_text(), f"{name}: missing anchor {href}"
            if name.endswith("1_theory"):  # MathJax is served with the book and typesets the equations
                page.wait_for_selector("mjx-container", timeout=20_000)
            shot = shots / f"{name.replace('/', '_')}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        browser.close()
    assert not failed, f"files the pages asked for and did not get: {failed}"


@pytest.mark.slow
def test_papermill_parameters_reach_the_notebook(tmp_path, monkeypatch):
    """A batch run for another model and feature spaces: the injected parameters are the ones used."""
    import papermill as pm
    from helpers import make_tiny_unet

    from mmdlib.export import save_pipeline

    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "other-model", budget=5)
    out = tmp_path / "out.ipynb"
    monkeypatch.setenv("MMDLIB_SMOKE", "1")  # the kernel inherits it
    pm.execute_notebook(ROOT / "notebooks" / "2_finetuning.ipynb", out, cwd=ROOT / "notebooks", progress_bar=False,
                        parameters={"model": str(folder), "features": "digits-b", "measure": "digits-a"})
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in code_cells(nb)
                   for o in c.outputs)
    assert f"model: {folder}" in text and "FID (digits-b)" in text
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


def test_the_pages_workflow_builds_with_make_book_and_publishes_the_html():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    assert any(s.get("run", "").startswith("make book") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert wf["jobs"]["deploy"]["steps"][0]["uses"].startswith("actions/deploy-pages")
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"


@pytest.mark.slow
def test_a_parameter_of_the_wrong_type_is_the_notebooks_own_message(tmp_path, monkeypatch):
    """papermill -p budget abc: refused by the notebook in one line (before smoke mode could overwrite it)."""
    import papermill as pm

    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    with pytest.raises(pm.PapermillExecutionError, match=r"setting 'budget' must be int, got 'abc' \(str\)"):
        pm.execute_notebook(ROOT / "notebooks" / "2_finetuning.ipynb", tmp_path / "out.ipynb", cwd=ROOT / "notebooks",
                            progress_bar=False, parameters={"budget": "abc"})


@pytest.mark.slow
def test_a_parameter_the_notebook_does_not_have_is_refused(tmp_path, monkeypatch):
    """papermill injects any name; a renamed or misspelt one must not leave the defaults silently in force."""
    import papermill as pm

    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown notebook parameter\(s\): timesteps; this notebook's "
                                                         r"parameters are seed, toy_finetune_iterations, toy_train_"):
        pm.execute_notebook(ROOT / "notebooks" / "1_theory.ipynb", tmp_path / "out.ipynb", cwd=ROOT / "notebooks",
                            progress_bar=False, parameters={"timesteps": 10, "seed": 1})
