import os

import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests build what they need (digit classifiers, tiny base models) in a fresh cache, never the user's.
os.environ["MMDLIB_CACHE"] = tempfile.mkdtemp(prefix="mmdlib-test-cache-")

import pytest
from diffusers import UNet2DModel
from helpers import make_tiny_unet


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()
