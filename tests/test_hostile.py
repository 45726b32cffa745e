"""Hostile input through the real CLI: one clear line and exit 2, nothing lost, nothing half-done."""
import hashlib
import json

import pytest
from helpers import make_tiny_unet

import mmdlib
from mmdlib.cli import main
from mmdlib.models import LoadedModel


def snapshot(folder):
    """Every file under ``folder`` by its relative path and content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr("mmdlib.load_model", lambda name, device="cpu": LoadedModel(
        make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny"))


def finetune(out, *extra):
    return main(["finetune", "--features", "digits-a", "--batch-size", "4", "--budget", "2", "--iterations", "2",
                 "--save-every", "1", "--device", "cpu", "--out", str(out), *extra])


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_someone_elses_files_is_never_touched(tmp_path, tiny, capsys, overwrite):
    out = tmp_path / "mine"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "holiday.png").write_bytes(b"\x89PNG not ours")
    (out / "log.csv").write_text("date,weight\n2026-11-01,71.5\n")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    assert finetune(out, *(["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert "holds log.csv, samples but no run.json" in err and "nothing was changed or deleted" in err
    assert err.count("\n") == 1 and snapshot(out) == before


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path, tiny):
    out = tmp_path / "run"
    assert finetune(out) == 0
    (out / "notes.txt").write_text("keep me")
    assert finetune(out, "--overwrite", "--lr", "1e-3") == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / "run.json").read_text())["identity"]["lr"] == 1e-3


def test_resuming_to_fewer_iterations_is_refused_and_changes_nothing(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert finetune(out) == 0
    before = snapshot(out)
    args = ["--resume", "--iterations", "1"]
    assert main(["finetune", "--features", "digits-a", "--batch-size", "4", "--budget", "2", "--save-every", "1",
                 "--device", "cpu", "--out", str(out), *args]) == 2
    assert "at iteration 2; resuming cannot undo iterations, so --iterations 1 is refused" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.parametrize("flag,value,msg", [
    ("--grad-clip", "0", "grad_clip (the largest gradient norm) must be a finite number > 0, got 0.0"),
    ("--grad-clip", "-1", "grad_clip (the largest gradient norm) must be a finite number > 0, got -1.0"),
    ("--lr", "inf", "learning rate must be a finite number > 0, got inf"),
    ("--lr", "nan", "learning rate must be a finite number > 0, got nan"),
])
def test_settings_that_cannot_train_are_refused_before_any_work(tmp_path, tiny, capsys, flag, value, msg):
    assert finetune(tmp_path / "run", flag, value) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_evaluate_out_naming_a_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    assert main(["evaluate", "--out", str(tmp_path), "--n", "10", "--seeds", "1"]) == 2
    assert "must name a file (the results' JSON), not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--adam-betas", "1.5", "0.9"], "adam_betas must be two numbers in [0, 1), got (1.5, 0.9)"),
    (["--adam-eps", "0"], "adam_eps must be a finite number > 0, got 0.0"),
    (["--workers", "-1"], "workers must be >= 0"),
    (["--device", "foo"], "unknown device 'foo'; use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "device 'cuda:7' is not available here"),
])
def test_bad_finetune_settings_are_one_line_before_any_loading(tmp_path, monkeypatch, capsys, args, msg):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert finetune(tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("budgets,msg", [("2,0", "budgets must be sampling step counts >= 1, got [2, 0]"),
                                         ("5,abc", "--budgets must be comma-separated integers"),
                                         ("", "--budgets must be comma-separated integers")])
def test_bad_budgets_are_refused_before_any_work(monkeypatch, capsys, budgets, msg):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert main(["evaluate", "--budgets", budgets, "--n", "10", "--seeds", "1"]) == 2
    assert msg in capsys.readouterr().err
