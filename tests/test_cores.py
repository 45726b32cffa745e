"""The CPU's cores shared among the mmdlib runs active on the machine (mmdlib.cores)."""
import fcntl
import os

import pytest
import torch

from mmdlib import cores
from mmdlib.errors import MMDLibError


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine of 4 threads whose registry of active runs is ``tmp_path``, with no thread setting in the environment."""
    monkeypatch.setattr(cores, "machine_threads", lambda: 4)
    monkeypatch.setattr(cores, "_DEFAULT", torch.get_num_threads())  # the program has not set its own count
    monkeypatch.setattr(cores, "runs_folder", lambda: tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MMDLIB_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(before)


def another_run(folder, pid):
    """A registration as another process holds it: the file, locked through its own descriptor."""
    fd = os.open(folder / f"{pid}.run", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_run_takes_the_cores_divided_among_the_active_runs_and_gives_them_back(machine):
    before = torch.get_num_threads()
    with cores.sharing_cores():
        assert cores.active_runs() == 1 and torch.get_num_threads() == 4  # alone: every core
        other = another_run(machine, 999_999)
        cores.rebalance()
        assert cores.active_runs() == 2 and torch.get_num_threads() == 2  # beside another run: half
        with cores.sharing_cores():  # nested (a grid sampled inside a finetune): still one run
            assert cores.active_runs() == 2
        os.close(other)  # the other run ended (or died): its lock is gone, its file is cleaned up
        cores.rebalance()
        assert torch.get_num_threads() == 4 and not (machine / "999999.run").exists()
    assert torch.get_num_threads() == before and list(machine.glob("*.run")) == []  # no longer counted


def test_a_count_the_program_set_itself_is_kept(machine):
    other = another_run(machine, 999_997)
    torch.set_num_threads(3)
    with cores.sharing_cores():
        cores.rebalance()
        assert torch.get_num_threads() == 3 and cores.active_runs() == 2
    os.close(other)


def test_mmdlib_threads_fixes_the_count_and_omp_num_threads_is_left_alone(machine, monkeypatch):
    other = another_run(machine, 999_998)
    monkeypatch.setenv("MMDLIB_THREADS", "3")
    assert cores.fair_threads() == 3
    monkeypatch.delenv("MMDLIB_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the caller's choice (the book's build gives each kernel one thread)
    assert cores.fair_threads() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cores.fair_threads() == 4  # this process is not registered: the other run alone is counted
    os.close(other)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("MMDLIB_THREADS", bad)
        with pytest.raises(MMDLibError, match=f"MMDLIB_THREADS must be a whole number >= 1 .* got {bad!r}"):
            cores.fair_threads()


def test_a_pinned_block_runs_on_the_threads_it_names():
    before = torch.get_num_threads()
    with cores.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
