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


def test_a_second_run_on_a_folder_in_use_is_refused_with_the_holders_pid(tmp_path, tiny, capsys):
    from mmdlib.runfolder import RunFolder

    out = tmp_path / "run"
    assert finetune(out) == 0
    capsys.readouterr()
    held = RunFolder(out)
    held.lock()  # as a running finetune holds it (flock: a second descriptor conflicts, even in this process)
    before = snapshot(out)
    for extra in ([], ["--overwrite"], ["--resume", "--iterations", "3"]):
        assert finetune(out, *extra) == 2
        err = capsys.readouterr().err
        assert f"is in use by PID {json.loads((out / 'run.json').read_text())['pid']}" in err and err.count("\n") == 1
    assert snapshot(out) == before
    held.unlock()
    assert finetune(out, "--resume", "--iterations", "3") == 0  # free again; and the finished run let go of it


def test_a_blow_up_keeps_the_last_finite_checkpoint_and_names_the_command_that_continues(tmp_path, tiny, capsys):
    import torch

    out = tmp_path / "run"
    assert finetune(out) == 0  # 2 iterations at the default lr, checkpoint at 2
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    capsys.readouterr()
    assert finetune(out, "--resume", "--iterations", "4", "--lr", "1e10") == 2  # Adam moves each weight by ~lr
    err = capsys.readouterr().err
    assert "in one Adam step at iteration 2 (lr 1e+10); stopped" in err and err.count("error:") == 1
    assert "checkpoint.pt (iteration 2), was written before this" in err and "--resume --lr 1e+09" in err
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["iteration"] == 2 and all(torch.equal(kept["unet"][k], v) for k, v in good["unet"].items())
    # the advice works: --resume accepts a changed lr, and run.json records each change
    assert finetune(out, "--resume", "--iterations", "4", "--lr", "1e-4") == 0
    record = json.loads((out / "run.json").read_text())
    assert record["iteration"] == 4 and record["identity"]["lr"] == 1e-4
    assert [(c["iteration"], c["to"]) for c in record["changes"]] == [(2, 1e10), (2, 1e-4)]
    assert not any(torch.isfinite(p).logical_not().any() for p in
                   torch.load(out / "checkpoint.pt", weights_only=True)["unet"].values())


def test_a_blow_up_before_the_first_checkpoint_says_to_start_again(tmp_path, tiny, capsys):
    assert finetune(tmp_path / "run", "--lr", "1e30", "--save-every", "5", "--iterations", "6") == 2
    err = capsys.readouterr().err
    assert "No checkpoint was written yet (the first comes at iteration 5)" in err and "--overwrite --lr 1e+29" in err


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not a checkpoint"])
def test_a_damaged_checkpoint_is_one_line_with_and_without_resume(tmp_path, tiny, capsys, damage):
    import torch

    out = tmp_path / "run"
    assert finetune(out) == 0
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    if damage == "not a checkpoint":
        torch.save({"weights": torch.ones(2)}, ckpt)
    else:
        ckpt.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"hello " * 100}[damage])
    before = snapshot(out)
    capsys.readouterr()
    assert finetune(out) == 2  # without --resume: run.json answers, the checkpoint is not read
    assert "already holds a run (iteration 2 of 2)" in capsys.readouterr().err
    assert finetune(out, "--resume", "--iterations", "3") == 2
    err = capsys.readouterr().err
    assert ("is not a readable checkpoint" in err or "is a torch file but not an mmdlib checkpoint" in err) and \
        "--overwrite" in err and err.count("\n") == 1
    assert snapshot(out) == before


def test_a_damaged_run_json_is_one_line(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    assert finetune(out) == 0
    (out / "run.json").write_text('{"identity": ')
    capsys.readouterr()
    assert finetune(out, "--resume") == 2
    assert "run.json' is not valid JSON" in capsys.readouterr().err


def test_temporary_files_a_killed_run_left_are_removed_when_the_folder_is_next_used(tmp_path, tiny):
    out = tmp_path / "run"
    assert finetune(out) == 0
    for name in (".checkpoint.pt-k1ll3d", ".run.json-x", ".log.csv-y"):
        (out / name).write_bytes(b"")
    (out / ".notes-keep").write_text("not ours")
    assert finetune(out, "--resume", "--iterations", "3") == 0
    assert sorted(p.name for p in out.glob(".*")) == [".notes-keep"]


def test_a_killed_cache_builders_temporary_folder_is_removed_by_the_next_build(tmp_path, monkeypatch):
    from mmdlib.cache import cached, config_key, full_key

    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    stale = tmp_path / "kind" / f".{config_key(full_key({'a': 1}))}-x7"
    (stale / "half").mkdir(parents=True)
    folder = cached("kind", {"a": 1}, lambda tmp: (tmp / "v").write_text("1"))
    assert (folder / "v").read_text() == "1" and not stale.exists()


def _unwritable() -> str:
    # a place even root cannot create a folder in (this machine's tests run as root)
    if not __import__("os").path.isdir("/sys/kernel"):
        pytest.skip("needs Linux's /sys")
    return "/sys/mmdlib-test"


@pytest.mark.parametrize("kind", ["file", "dangling symlink", "unwritable", "too long"])
def test_a_bad_out_is_one_line_before_any_loading(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("a file of mine")
    elif kind == "dangling symlink":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "unwritable":
        out = _unwritable() + "/run"
    else:
        out = tmp_path / ("x" * 300)
    before = snapshot(tmp_path)
    assert finetune(out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and {"file": "is a file", "dangling symlink": "which does not exist",
                                     "unwritable": "cannot create the output folder",
                                     "too long": "File name too long"}[kind] in err
    assert snapshot(tmp_path) == before and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("cache", ["a file", "unwritable"])
def test_an_unusable_cache_is_one_line(tmp_path, tiny, monkeypatch, capsys, cache):
    path = tmp_path / "cache"
    if cache == "a file":
        path.write_text("not a folder")
    monkeypatch.setenv("MMDLIB_CACHE", str(path) if cache == "a file" else _unwritable())
    assert finetune(tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "set MMDLIB_CACHE to a writable folder" in err and err.count("\n") == 1


def test_a_relative_path_that_does_not_exist_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["evaluate", "--model", "runs/missing", "--n", "10", "--seeds", "1"]) == 2
    assert "there is no folder 'runs/missing'" in capsys.readouterr().err


def _png_folder(folder, n=6, mode="L", size=8):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new(mode, (size, size), color=(40 * i) if mode == "L" else (40 * i, 0, 0)).save(folder / f"{i}.png")
    return folder


def test_folder_datasets_need_a_root_name_a_damaged_image_and_keep_grayscale(tmp_path, tiny, capsys):
    with pytest.raises(mmdlib.MMDLibError, match="the folder dataset needs the folder: pass --data-root DIR"):
        mmdlib.get_dataset("folder", "all")
    folder = _png_folder(tmp_path / "imgs")
    assert mmdlib.get_dataset("folder", "all", root=folder)[0][0].shape == (3, 8, 8)  # RGB by default
    assert mmdlib.get_dataset("folder", "all", root=folder, channels=1)[0][0].shape == (1, 8, 8)
    # the CLI reads a folder with the model's channels: the tiny model has 1
    assert finetune(tmp_path / "run", "--dataset", "folder", "--data-root", str(folder)) == 0
    (folder / "3.png").write_bytes((folder / "3.png").read_bytes()[:20])
    capsys.readouterr()
    assert finetune(tmp_path / "run2", "--dataset", "folder", "--data-root", str(folder)) == 2
    err = capsys.readouterr().err
    assert f"cannot read the image {str(folder / '3.png')!r}" in err and err.count("error:") == 1
    assert "Traceback" not in err


def test_finetune_takes_inception_weights_only_with_inception_features(tmp_path, tiny, capsys):
    assert finetune(tmp_path / "run", "--inception-weights", str(tmp_path / "w.pth")) == 2
    err = capsys.readouterr().err
    assert "--inception-weights is for the Inception spaces (inception, inception-spatial)" in err
    assert main(["finetune", "--features", "inception", "--inception-weights", str(tmp_path / "w.pth"),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert f"weights_path {str(tmp_path / 'w.pth')!r} is not a file" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [(["--n", "0"], "n must be >= 2 generated samples per budget and seed, got 0"),
                                      (["--n", "1"], "n must be >= 2 generated samples per budget and seed, got 1"),
                                      (["--seeds", "0"], "seeds must be >= 1"),
                                      (["--sampler", "euler"], "unknown sampler 'euler'")])
def test_bad_evaluation_sizes_are_refused_before_any_loading(monkeypatch, capsys, args, msg):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
