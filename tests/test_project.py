"""The project's promises about itself: pins agree, the README opens with the two commands."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return dict(re.match(r"\s*-?\s*([A-Za-z0-9_.\-]+)==(\S+)", l).groups() for l in lines
                if re.match(r"\s*-?\s*[A-Za-z0-9_.\-]+==", l))


def test_environment_yml_pins_equal_constraints():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert constraints and env == constraints


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [l.split("#")[0].strip() for l in block.strip().splitlines()] == ["make book", "make test"]
    assert text.index("make book") < 200


def test_public_api_contract_names():
    import mmdlib

    for name in ["linear_betas", "timestep_subset", "ddim_sample", "ddpm_sample", "mmd2_unbiased",
                 "get_feature_extractor", "digits_dataset", "save_pipeline"]:
        assert callable(getattr(mmdlib, name)), name


def test_one_version_shown_by_the_cli_installed_by_pip_and_released_in_the_changelog(capsys):
    from importlib import metadata

    import pytest

    import mmdlib
    from mmdlib.cli import main

    assert re.fullmatch(r"\d+\.\d+\.\d+", mmdlib.__version__)
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()  # pyproject reads mmdlib.__version__
    assert metadata.version("mmdlib") == mmdlib.__version__  # the installed metadata agrees
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mmdlib {mmdlib.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and re.search(rf"^## \[{re.escape(mmdlib.__version__)}\] - \d{{4}}-\d\d-\d\d$",
                                                       changelog, re.M)


def _imports(path: Path) -> set[str]:
    """The mmdlib modules a module imports, at its top or inside functions."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmdlib."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mmdlib.")}
    return out


def _layers() -> dict[str, int]:
    """Each module's layer as book/package.md lists them: a "## N. ..." heading per layer, a table row
    beginning with the module's name in backticks."""
    layer, out = None, {}
    for line in (ROOT / "book" / "package.md").read_text().splitlines():
        if m := re.match(r"## (\d+)\. ", line):
            layer = int(m.group(1))
        elif (m := re.match(r"\| `(\w+)` \|", line)) and layer is not None:
            assert m.group(1) not in out, f"{m.group(1)} is listed twice"
            out[m.group(1)] = layer
    return out


def test_the_layers_package_md_describes_are_the_imports_layers_only_look_down_and_nothing_cycles():
    modules = {p.stem: p for p in (ROOT / "mmdlib").glob("*.py") if p.stem not in ("__init__", "__main__")}
    layer = _layers()
    assert set(layer) == set(modules), f"listed but absent: {set(layer) - set(modules)}; absent from package.md: " \
                                       f"{set(modules) - set(layer)}"
    graph = {m: _imports(p) & set(modules) for m, p in modules.items()}
    upward = [f"{m} (layer {layer[m]}) imports {n} (layer {layer[n]})" for m in graph for n in graph[m]
              if layer[n] > layer[m]]
    assert not upward, upward
    state: dict[str, int] = {}

    def visit(m, path):  # depth-first; a module met again on the current path closes a cycle
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_modules_and_classes_stay_small():
    import ast

    for path in (ROOT / "mmdlib").glob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= 350, f"{path.name} has {len(lines)} lines (at most 350: split it by job)"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= (130 if node.name == "Finetuner" else 150), f"{path.name}: {node.name} has {size} lines"
