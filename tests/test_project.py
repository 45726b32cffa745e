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
