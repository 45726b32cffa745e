import os

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each computes on one thread (set before torch loads, and inherited by
    # the CLI runs tests start), so that workers do not fight over cores (mmdlib.cores) and results do not depend
    # on the machine
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests build what they need (digit classifiers, tiny base models) in a fresh cache, never the user's.
os.environ["MMDLIB_CACHE"] = tempfile.mkdtemp(prefix="mmdlib-test-cache-")

import pytest
import torch
from diffusers import UNet2DModel
from helpers import DINOV2_SHAPE, make_tiny_unet


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """torch-fidelity's Inception with random weights (offline): only the architecture matters."""
    from helpers import write_random_inception_weights

    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "weights.pth")


@pytest.fixture(scope="session")
def dinov2_file(tmp_path_factory):
    """dinov2_vitl14_pretrain.pth's layout (mask_token included), random weights."""
    D, DEPTH, HEADS, GRID = DINOV2_SHAPE
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, 1 + GRID * GRID, D, scale=0.5), "mask_token": r(1, D),
          "patch_embed.proj.weight": r(D, 3, 14, 14), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D, scale=0.1), "norm.bias": r(D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(D, scale=0.1), b + "norm1.bias": r(D),
                   b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
                   b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D), b + "ls1.gamma": r(D, scale=0.3),
                   b + "norm2.weight": 1 + r(D, scale=0.1), b + "norm2.bias": r(D),
                   b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
                   b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D), b + "ls2.gamma": r(D, scale=0.3)})
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vitl14_pretrain.pth"
    torch.save(sd, path)
    return path
