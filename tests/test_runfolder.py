"""A run's folder: checked when named, opened (locked, its contents checked) once, written atomically."""
import pytest
import torch
from helpers import TinyFeatures

import mmdlib
from mmdlib.runfolder import RunFolder, unstable


def test_the_run_folder_records_its_iteration_and_loads_only_plain_data(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.start({"identity": {"lr": 1.0}, "iterations": 4}, 0, overwrite=False)
    folder.save({"unet": {"w": torch.ones(2)}, "optimizer": {}}, 3)
    folder.log({"iteration": 3, "loss": "0.5", "grad_norm": "1", "seconds": "0.1"})
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the iteration should not need the checkpoint"))
    assert folder.saved_iteration() == 3
    monkeypatch.undo()
    assert folder.load("cpu")["iteration"] == 3 and folder.check({"lr": 1.0}, resume=True, overwrite=False)
    torch.save({"unet": {}, "iteration": 1, "hook": TinyFeatures}, folder.checkpoint)  # not plain data
    with pytest.raises(mmdlib.MMDLibError, match="holds more than tensors and plain data, so it was not loaded"):
        folder.load("cpu")



def test_a_folder_is_checked_when_named_and_creates_nothing_until_opened(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad, msg in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "which is a file")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            RunFolder(bad)
    folder = RunFolder(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    assert folder.open({"lr": 1.0}) is False and folder.path.is_dir()
    folder.unlock()


def test_opening_a_held_or_refused_folder_changes_nothing(tmp_path):
    a = RunFolder(tmp_path / "run")
    a.open({"lr": 1.0})
    a.start({"identity": {"lr": 1.0}, "iterations": 2}, 0, overwrite=False)
    with pytest.raises(mmdlib.MMDLibError, match="is in use by PID"):
        RunFolder(tmp_path / "run").open({"lr": 1.0}, resume=True)
    a.unlock()
    with pytest.raises(mmdlib.MMDLibError, match="already holds a run"):
        RunFolder(tmp_path / "run").open({"lr": 1.0})
    b = RunFolder(tmp_path / "run")
    assert b.open({"lr": 1.0}, resume=True) is True  # the refusal released the lock
    b.unlock()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "log.csv").write_text("mine")
    with pytest.raises(mmdlib.MMDLibError, match="holds log.csv but no run.json"):
        RunFolder(tmp_path / "theirs").open({"lr": 1.0})
    assert (tmp_path / "theirs" / "log.csv").read_text() == "mine"


def test_a_blow_up_names_the_last_checkpoint_and_the_command_that_continues(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.start({"identity": {}, "iterations": 9}, 0, overwrite=False)
    e = unstable(folder, "the loss became nan", 3, 1e-3, save_every=5)
    assert str(e).startswith("the loss became nan at iteration 3 (lr 0.001); stopped. No checkpoint was written yet "
                             "(the first comes at iteration 5), so the run left nothing behind")
    assert "command with --lr 0.0001" in str(e)
    folder.save({"unet": {}, "optimizer": {}}, 5)
    e = unstable(folder, "the loss became nan", 7, 1e-3, save_every=5)
    assert "checkpoint.pt (iteration 5), was written before this" in str(e) and "--resume --lr 0.0001" in str(e)
