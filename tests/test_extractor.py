"""The feature extractor's contract, on a tiny extractor and on the registry's: input checks, frozen weights
in eval mode, an identity that names the weights."""
import pytest
import torch
from torch import nn

import mmdlib
from mmdlib.extractor import FeatureExtractor
from mmdlib.features import get_feature_extractor


class Tiny(FeatureExtractor):
    name, dim, channels, size = "tiny", 4, 3, None

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.freeze()

    def features(self, images):
        return self.net(images)


def test_an_extractor_is_frozen_in_eval_mode_and_repeats_gray_to_rgb():
    f = Tiny().train()  # train() cannot switch batch statistics on
    assert not f.training and not any(p.requires_grad for p in f.parameters())
    gray = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(f(gray), f(gray.expand(-1, 3, -1, -1)))
    x = gray.clone().requires_grad_(True)
    f(x).sum().backward()
    assert x.grad.abs().sum() > 0  # differentiable with respect to the images


def test_the_identity_names_the_weights():
    a, b = Tiny(0).identity(), Tiny(1).identity()
    assert a["name"] == "tiny" and a["class"] == "Tiny" and a["weights"] != b["weights"] and a == Tiny(0).identity()


def test_feature_input_errors():
    f = get_feature_extractor("digits-a")
    with pytest.raises(mmdlib.MMDLibError, match="unknown feature space 'vgg'; known feature spaces: inception, inception-spatial, clip"):
        get_feature_extractor("vgg")
    with pytest.raises(mmdlib.MMDLibError, match=r"must lie in \[0, 1\], got values in \[-1"):
        f(torch.full((2, 1, 8, 8), -1.0))
    with pytest.raises(mmdlib.MMDLibError, match="expects 8x8 images, got 16x16"):
        f(torch.rand(2, 1, 16, 16))
    with pytest.raises(mmdlib.MMDLibError, match="expects 1-channel images"):
        f(torch.rand(2, 3, 8, 8))
    with pytest.raises(mmdlib.MMDLibError, match=r"float tensor \[N, C, H, W\]"):
        f(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
