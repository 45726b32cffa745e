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
    assert "No checkpoint was written yet (the first comes at iteration 5), so the run left nothing behind: rerun " \
        "the same command with --lr 1e+29" in err and not (tmp_path / "run").exists()
    assert finetune(tmp_path / "run", "--save-every", "5", "--iterations", "6") == 0  # the advice works


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
    for name in (".checkpoint.pt.mmdlib-tmp-k1ll3d_x", ".run.json.mmdlib-tmp-abcdefgh", ".log.csv.mmdlib-tmp-y_z01234"):
        (out / name).write_bytes(b"")  # atomic_write's names, as a killed run leaves them
    users = (".notes-keep", ".log.csv-backup", ".run.json-v1", ".checkpoint.pt-old", ".log.csv.mmdlib-tmp-mine")
    for name in users:
        (out / name).write_text("not ours")
    assert finetune(out, "--resume", "--iterations", "3") == 0
    assert sorted(p.name for p in out.glob(".*")) == sorted(users)


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
    monkeypatch.setenv("MMDLIB_SMOKE", "1")  # its one-epoch classifiers are trained and cached (the full ones ship)
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


@pytest.mark.parametrize("args,msg", [*((["--n", n], f"need 3 neighbours each), got {n};") for n in "012349"),
                                      (["--seeds", "0"], "seeds must be between 1 and 256"),
                                      (["--seeds", "1000"], "seeds must be between 1 and 256 (the number of "
                                                            "evaluation seeds, used as seeds 0..k-1"),
                                      (["--eta", "inf"], "eta must be a number in [0, 1]"),
                                      (["--eta", "nan"], "eta must be a number in [0, 1]"),
                                      (["--data-root", "data"], "the digits dataset is embedded"),
                                      (["--sampler", "euler"], "unknown sampler 'euler'")])
def test_bad_evaluation_sizes_are_refused_before_any_loading(monkeypatch, capsys, args, msg):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert main(["evaluate", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


# --- round two: nothing a user wrote is lost ----------------------------------------------------------------------

@pytest.fixture
def ckpt(tmp_path):
    """A small checkpoint in the DDPM port's format, for convert."""
    import torch

    import ddpm_reference as ref

    path = tmp_path / "ckpt.pth"
    torch.save(ref.random_state(ch=32, **ref.SMALL), path)
    return path


def convert(src, out, *extra):
    return main(["convert", str(src), "--out", str(out), "--size", "16", *extra])


def test_convert_deletes_only_a_folder_it_wrote_and_never_the_current_one(tmp_path, ckpt, monkeypatch, capsys):
    project = tmp_path / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    (project / "notes.md").write_text("# notes")
    monkeypatch.chdir(project)
    before = snapshot(tmp_path)
    here = "is the current folder or holds it"
    for out, words in ((".", here), (project, here), (tmp_path, here),
                       ("src", "holds 1 file(s) a pipeline folder does not hold (main.py)")):
        assert convert(ckpt, out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
        assert snapshot(tmp_path) == before
    # a folder convert wrote is replaced; once a user's file is in it, it is not
    assert convert(ckpt, tmp_path / "converted") == 0 and convert(ckpt, tmp_path / "converted", "--overwrite") == 0
    (tmp_path / "converted" / "unet" / "my-notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert convert(ckpt, tmp_path / "converted", "--overwrite") == 2
    assert "holds 1 file(s) a pipeline folder does not hold (unet/my-notes.txt)" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_convert_out_naming_a_symlink_is_refused(tmp_path, ckpt, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (tmp_path / "link").symlink_to(target)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert convert(ckpt, tmp_path / "link", *extra) == 2
        err = capsys.readouterr().err
        assert "is a symbolic link (to" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before and (tmp_path / "link").is_symlink()


def test_overwrite_removes_only_the_files_a_run_wrote_inside_its_folders(tmp_path, tiny):
    out = tmp_path / "run"
    assert finetune(out) == 0
    mine = {out / "samples" / "holiday.png": b"png", out / "samples" / "iter_12.png": b"not a grid name",
            out / "finetuned" / "README.md": b"notes", out / "finetuned" / "unet" / "notes.txt": b"mine"}
    for path, data in mine.items():
        path.write_bytes(data)
    assert finetune(out, "--overwrite", "--iterations", "1") == 0
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["holiday.png", "iter_000000.png",
                                                                    "iter_000001.png", "iter_12.png"]


@pytest.mark.parametrize("link", ["samples", "finetuned", "log.csv"])
def test_a_symlink_where_a_run_writes_is_refused_before_anything_is_deleted(tmp_path, tiny, capsys, link):
    out, theirs = tmp_path / "run", tmp_path / "theirs"
    assert finetune(out) == 0
    theirs.mkdir()
    (theirs / "iter_000000.png").write_bytes(b"their picture")
    (theirs / "model_index.json").write_text("{}")
    import shutil

    shutil.rmtree(out / link) if (out / link).is_dir() else (out / link).unlink()
    (out / link).symlink_to(theirs if link != "log.csv" else theirs / "model_index.json")
    before, theirs_before = snapshot(out), snapshot(theirs)
    capsys.readouterr()
    for extra in (["--overwrite"], ["--resume", "--iterations", "3"]):
        assert finetune(out, *extra) == 2
        err = capsys.readouterr().err
        assert f"{link}' is a symbolic link (to" in err and "Nothing was changed" in err and err.count("\n") == 1
        assert snapshot(out) == before and snapshot(theirs) == theirs_before and (out / link).is_symlink()


def test_demo_refuses_a_folder_holding_a_users_metrics_and_overwrites_only_its_own(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"my": "numbers"}')
    before = snapshot(out)
    assert main(["demo", "--out", str(out), "--iterations", "1", "--n", "10", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds metrics.json but no run.json" in err and err.count("\n") == 1 and snapshot(out) == before


def test_evaluate_out_replaces_only_earlier_results_and_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    from mmdlib.evaluate import is_results

    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    mine = tmp_path / "results.json"
    for text in ('{"my": "results"}', "not json", '{"5": {"digits-a": {"kid": 1}}}'):
        mine.write_text(text)
        assert main(["evaluate", "--out", str(mine), "--n", "10", "--seeds", "1"]) == 2
        err = capsys.readouterr().err
        assert "exists and is not an evaluation's results, so it is not replaced" in err and mine.read_text() == text
    (tmp_path / "link.json").symlink_to(mine)
    for out, words in ((tmp_path / "link.json", "symbolic link"), (_unwritable() + "/r.json", "cannot create")):
        assert main(["evaluate", "--out", str(out), "--n", "10", "--seeds", "1"]) == 2
        assert words in capsys.readouterr().err
    mine.write_text('{"5": {"digits-a": {"fid": 1.5, "kid": 0.1}}, "10": {"digits-a": {"fid": 1.2}}}')
    assert is_results(mine)


# --- no non-finite result with exit 0 -----------------------------------------------------------------------------

def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, ckpt, capsys):
    import torch

    state = torch.load(ckpt, weights_only=True)
    state["mid.block_1.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    assert convert(tmp_path / "nan.pth", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "the weight 'mid.block_1.conv1.weight' holds 1 non-finite value(s)" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    # a model folder with a NaN weight: refused when loaded, by every command
    from mmdlib.export import save_pipeline

    unet = make_tiny_unet(1, 8)
    with torch.no_grad():
        unet.conv_out.bias[0] = float("inf")
    folder = save_pipeline(unet, tmp_path / "bad-model", budget=2)
    assert main(["evaluate", "--model", str(folder), "--n", "10", "--seeds", "1", "--budgets", "1"]) == 2
    assert "the weight 'conv_out.bias' holds 1 non-finite value(s)" in capsys.readouterr().err


def test_evaluate_writes_no_nan_a_score_that_is_not_finite_is_null_and_exit_is_not_zero(tmp_path, tiny, monkeypatch,
                                                                                          capsys):
    def evaluate(model, cfg, **kw):
        return {1: {"digits-a": {"fid": 2.0, "fid_std": float("nan"), "is": float("nan"), "fid_per_seed": [2.0]}}}

    monkeypatch.setattr("mmdlib.evaluate.evaluate", evaluate)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--n", "10", "--seeds", "1", "--budgets", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "2 score(s) came out NaN or infinite (1/digits-a/fid_std, 1/digits-a/is)" in captured.err
    assert json.loads(out.read_text()) == json.loads(captured.out) == {
        "1": {"digits-a": {"fid": 2.0, "fid_std": None, "is": None, "fid_per_seed": [2.0]}}}


@pytest.mark.parametrize("value", ["1e9", "inf", "-1", "1.5"])
def test_eta_outside_0_1_is_refused_before_anything_is_written(tmp_path, tiny, capsys, value):
    assert finetune(tmp_path / "run", "--eta", value) == 2
    err = capsys.readouterr().err
    assert "eta must be a number in [0, 1]" in err and err.count("\n") == 1 and not (tmp_path / "run").exists()
    assert finetune(tmp_path / "run", "--eta", "0.5") == 0  # the corrected command is not refused


# --- tracebacks become one line -----------------------------------------------------------------------------------

@pytest.mark.parametrize("record", ['{"identity": {}, "iteration": "abc", "iterations": 2}',
                                    '{"iteration": 2, "iterations": 2}', '[1, 2]', '{"identity": [], "iteration": 2}'])
def test_a_run_json_that_is_not_a_run_record_is_one_line_and_overwrite_replaces_it(tmp_path, tiny, capsys, record):
    out = tmp_path / "run"
    assert finetune(out) == 0
    (out / "run.json").write_text(record)
    before = snapshot(out)
    capsys.readouterr()
    for extra in ([], ["--resume", "--iterations", "3"]):
        assert finetune(out, *extra) == 2
        err = capsys.readouterr().err
        assert "is not an mmdlib run record" in err and err.count("\n") == 1 and snapshot(out) == before
    assert finetune(out, "--overwrite") == 0  # the advice works


def test_a_checkpoint_of_another_shape_or_with_a_nan_is_one_line(tmp_path, tiny, capsys):
    import torch

    out = tmp_path / "run"
    assert finetune(out) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    for damage, words in (("shape", "does not fit this model"), ("nan", "non-finite value")):
        bad = {k: v.clone() for k, v in state["unet"].items()}
        if damage == "shape":
            bad["conv_in.weight"] = torch.zeros(3, 1, 3, 3)
        else:
            bad["conv_in.weight"][0] = float("nan")
        torch.save({**state, "unet": bad}, out / "checkpoint.pt")
        before = snapshot(out)
        capsys.readouterr()
        assert finetune(out, "--resume", "--iterations", "3") == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and snapshot(out) == before


def test_a_model_folder_whose_config_has_wrong_types_is_one_line(tmp_path, capsys):
    from mmdlib.export import save_pipeline

    folder = save_pipeline(make_tiny_unet(1, 8), tmp_path / "model", budget=2)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": 7}))
    assert main(["evaluate", "--model", str(folder), "--n", "10", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"could not load a diffusers UNet from the folder {str(folder)!r}" in err and err.count("\n") == 1


def test_ctrl_c_is_one_line_exit_130_and_says_how_to_continue(tmp_path, tiny, monkeypatch, capsys):
    from mmdlib.runfolder import RunFolder

    real_log = RunFolder.log

    def log(self, row):  # Ctrl-C arrives after iteration 3 (the checkpoint of 2 written)
        if row["iteration"] == 3:
            raise KeyboardInterrupt
        real_log(self, row)

    monkeypatch.setattr(RunFolder, "log", log)
    out = tmp_path / "run"
    assert finetune(out, "--iterations", "4", "--save-every", "2") == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("interrupted at iteration 3; the last checkpoint is at iteration 2: rerun "
                                            "the same command with --resume to continue from it.")
    assert "Traceback" not in err
    monkeypatch.setattr(RunFolder, "log", real_log)
    assert finetune(out, "--iterations", "4", "--save-every", "2", "--resume") == 0
    # before the first checkpoint: nothing is left, and the same command starts again
    monkeypatch.setattr(RunFolder, "log", log)
    assert finetune(tmp_path / "early", "--iterations", "4", "--save-every", "4") == 130
    assert "before the first checkpoint, so the run left nothing behind" in capsys.readouterr().err
    assert not (tmp_path / "early").exists()
    monkeypatch.setattr("mmdlib.evaluate.evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["evaluate", "--n", "10", "--seeds", "1", "--budgets", "1"]) == 130
    assert capsys.readouterr().err == "interrupted; nothing was written (--out is written when the evaluation " \
                                      "completes).\n"


# --- messages that say what to do ---------------------------------------------------------------------------------

def test_a_run_refused_after_it_started_leaves_nothing_and_the_fixed_command_runs(tmp_path, tiny, capsys):
    folder = _png_folder(tmp_path / "imgs", n=8)
    (folder / "3.png").write_bytes((folder / "3.png").read_bytes()[:20])
    out = tmp_path / "run"
    assert finetune(out, "--dataset", "folder", "--data-root", str(folder)) == 2
    assert "cannot read the image" in capsys.readouterr().err and not out.exists()
    _png_folder(folder, n=8)  # repaired
    assert finetune(out, "--dataset", "folder", "--data-root", str(folder)) == 0


def test_a_loss_not_finite_before_any_step_is_not_blamed_on_the_learning_rate(tmp_path, tiny, monkeypatch, capsys):
    import torch

    monkeypatch.setattr("mmdlib.finetune.Finetuner.loss",
                        lambda self, it: torch.tensor(float("nan"), requires_grad=True))
    assert finetune(tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "before this run took any step, so the learning rate is not the cause" in err and "--lr" not in err
    assert not (tmp_path / "run").exists()


def test_a_crafted_file_is_never_answered_with_weights_only_false(tmp_path, capsys):
    import torch

    torch.save({"unet": make_tiny_unet(1, 8)}, tmp_path / "pickled.pt")  # a whole module: unpickling runs code
    assert convert(tmp_path / "pickled.pt", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "is not a checkpoint this tool can read: it holds more than tensors" in err and "weights_only" not in err
    assert main(["finetune", "--features", "inception", "--inception-weights", str(tmp_path / "pickled.pt"),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is not torch-fidelity's Inception weights this tool can read" in err and "weights_only" not in err


def test_a_run_folder_given_as_the_model_points_to_its_model(tmp_path, tiny, monkeypatch, capsys):
    out = tmp_path / "run"
    assert finetune(out) == 0
    monkeypatch.undo()  # the real load_model
    assert main(["evaluate", "--model", str(out), "--n", "10", "--seeds", "1"]) == 2
    assert f"is a finetuning run's folder, not a model; the model it made is {str(out / 'finetuned')!r}" in \
        capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--resume", "--overwrite"], "--resume continues the run in the folder and --overwrite replaces it"),
    (["--data-root", "data"], "the digits dataset is embedded (no files to find), so --data-root 'data' would be"),
    (["--timestep-lr", "0.1"], "--timestep-lr is the learnt timesteps' learning rate; without --learn-timesteps"),
    (["--memory-gib", "4", "--checkpointing", "none"], "--memory-gib is what --checkpointing auto plans within"),
])
def test_contradictory_flags_are_refused_before_any_loading(tmp_path, monkeypatch, capsys, args, msg):
    monkeypatch.setattr("mmdlib.load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert finetune(tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_images_of_another_size_say_how_to_resize(tmp_path, tiny, capsys):
    folder = _png_folder(tmp_path / "big", size=16)
    assert finetune(tmp_path / "run", "--dataset", "folder", "--data-root", str(folder)) == 2
    err = capsys.readouterr().err
    assert "resize the folder's images to 8x8 first" in err and "size=" in err and not (tmp_path / "run").exists()


# --- slow paths say so, or stop being slow ------------------------------------------------------------------------

def test_workers_are_capped_at_the_cores_with_a_note(monkeypatch, capsys):
    from mmdlib import cores

    monkeypatch.setattr(cores, "cores", lambda: 2)
    assert cores.worker_count(1000) == 2 and cores.worker_count(1) == 1
    assert "1000 data workers asked for; this machine gives the run 2 cores, so it uses 2" in capsys.readouterr().err


def test_an_unreachable_hub_is_asked_once_and_fails_in_one_line(monkeypatch, capsys):
    import socket

    from mmdlib import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for v in hub.PROXIES:
        monkeypatch.delenv(v, raising=False)
    port = 9
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hub.reachable.cache_clear()
    tried = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(
        ConnectionRefusedError(111, "Connection refused")))
    assert main(["evaluate", "--model", "someone/some-model", "--n", "10", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"The hub (127.0.0.1:{port}) cannot be reached from this machine, and there is no local copy" in err
    assert err.count("\n") == 1 and len(tried) == 1
    hub.reachable.cache_clear()


def test_compiling_on_a_cpu_says_so(tmp_path, tiny, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)  # the note, not minutes of compiling
    assert finetune(tmp_path / "run", "--compile", "on", "--iterations", "1") == 0
    assert "compiling the UNet with torch.compile" in capsys.readouterr().err
