"""Devices by name and the process group: a device this machine lacks is one clear line; one process is
its own whole world."""
import pytest
import torch

from mmdlib import devices
from mmdlib.errors import MMDLibError


def test_devices_by_name():
    assert devices.pick_device("cpu") == torch.device("cpu")
    assert devices.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MMDLibError, match="unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"):
        devices.pick_device("gpu0")
    with pytest.raises(MMDLibError, match=f"device 'cuda:{torch.cuda.device_count()}' is not available here"):
        devices.pick_device(f"cuda:{torch.cuda.device_count()}")
    assert devices.check_device_name("cuda:7") == "cuda:7"  # spelt right: whether it exists is not its question


def test_one_process_is_the_whole_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    p = devices.Processes("cpu")
    assert (p.world, p.rank, p.main) == (1, 0, True) and p.device("cpu") == torch.device("cpu")
    x = torch.randn(3, 2, requires_grad=True)
    assert p.gather_with_grad(x) is x and p.share(8) == (0, 8)
    p.barrier()
    p.rank, p.world = 1, 4  # as rank 1 of 4 sees its share of a global batch
    assert p.share(8) == (2, 2) and not p.main
