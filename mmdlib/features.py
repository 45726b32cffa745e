"""Perceptual feature spaces phi of the MMD loss and the metrics (paper Sec. III-C), in a registry.

Every extractor takes float images [N, C, H, W] in [0, 1], returns [N, D] (``.dim`` = D), is
differentiable with respect to the images, and has frozen weights. ``metric_features`` is the path the
metrics use on 8-bit images: the same as the differentiable one, except for CLIP and DINOv2, whose metric
paths are their reference code's preprocessing (PIL's antialiased bicubic resize): open_clip's, as FID_CLIP
computes it, and dgm-eval's, as FD_DINOv2 does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .dinov2 import DinoV2Features
from .errors import MMDLibError, unreadable
from .extractor import RANGE_TOLERANCE, FeatureExtractor  # noqa: F401  (their public home is here)
from .classifiers import digits_classifier


# --- Inception-V3 (torch-fidelity) ---------------------------------------------------------------------

_INCEPTION_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's InceptionV3 '2048' features (the FID/KID space) through a differentiable float path.

    torch-fidelity's own forward takes uint8 only; this one takes x in [0, 1], scales it to [0, 255] and
    then runs exactly torch-fidelity's steps (its TF1-compatible bilinear resize to 299, (x - 128) / 128,
    its layers), so on 8-bit images it gives the same numbers.
    """

    name, dim = "inception", 2048

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path is not None and not Path(weights_path).is_file():
            raise MMDLibError(f"inception: weights_path {str(weights_path)!r} is not a file.")
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=weights_path)
        except Exception as e:
            if weights_path is not None:  # a file that is not the weights
                raise unreadable(weights_path, "torch-fidelity's Inception weights", e) from None
            if not isinstance(e, OSError):  # urllib errors are OSErrors
                raise
            raise MMDLibError("inception: could not download torch-fidelity's Inception weights (offline?). "
                              "Download weights-inception-2015-12-05-6726825d.pth (torch-fidelity's GitHub "
                              "releases) on a connected machine and pass --inception-weights FILE (weights_path= "
                              "in Python).") from e
        self.freeze()

    def tf1_input(self, images: torch.Tensor) -> torch.Tensor:
        """torch-fidelity's input steps on x in [0, 1]: to [0, 255], its TF1-compatible bilinear resize to 299,
        (x - 128) / 128."""
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = images.to(self.net.feature_extractor_internal_dtype) * 255
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        return (x - 128) / 128

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tf1_input(images)
        for name in _INCEPTION_LAYERS:
            x = getattr(self.net, name)(x)
        return torch.flatten(x, 1).to(torch.float32)

    def config(self) -> dict:
        return {"torch_fidelity": "inception-v3-compat", "layer": "2048", "resize": "tf1-bilinear-299"}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from '2048' features: torch-fidelity's 'logits_unbiased' (the IS input)."""
        return features.float() @ self.net.fc.weight.detach().float().to(features.device).T


class InceptionSpatialFeatures(InceptionFeatures):
    """sFID's space (Nash et al. 2021) as the ADM evaluation suite computes it: the first 7 channels of the
    17x17 ``mixed_6/conv`` activations of the same TF1 Inception graph, flattened in ADM's order (TensorFlow's
    NHWC: position first, then channel; 17 x 17 x 7 = 2023), so that statistics are exchangeable with ADM's
    reference batches (``evaluate(reference=...)``). In torch-fidelity's port ``mixed_6`` is ``Mixed_6d`` and
    its ``conv`` the 1x1 branch (``branch1x1``: conv, batch norm, ReLU). FID in this space is sFID; it has no
    classifier, so no Inception Score."""

    name, dim = "inception-spatial", 17 * 17 * 7
    logits = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tf1_input(images)
        for name in _INCEPTION_LAYERS[:_INCEPTION_LAYERS.index("Mixed_6d")]:  # up to Mixed_6d's input
            x = getattr(self.net, name)(x)
        x = self.net.Mixed_6d.branch1x1(x)[:, :7]  # [N, 7, 17, 17]
        return x.permute(0, 2, 3, 1).flatten(1).to(torch.float32)  # ADM's [N, 17, 17, 7] reshaped

    def config(self) -> dict:
        return {"torch_fidelity": "inception-v3-compat", "layer": "Mixed_6d.branch1x1[:7] (mixed_6/conv)",
                "resize": "tf1-bilinear-299", "order": "NHWC (ADM)"}


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A weights file in torch-fidelity's Inception key layout with random (He-initialised) weights, for
    ``InceptionFeatures(weights_path=...)`` offline: tests and speed benchmarks, where only the architecture
    matters."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return Path(path)


# --- CLIP (open_clip) ----------------------------------------------------------------------------------

class ClipFeatures(FeatureExtractor):
    """open_clip image embeddings (ViT-B/32, OpenAI weights by default).

    Two input paths. The loss (``forward``) resizes with differentiable bicubic ``F.interpolate`` without
    antialiasing, as the official MMD-DDM code does; the metrics (``metric_features``) run open_clip's own
    evaluation transform on 8-bit PIL images (antialiased bicubic resize, centre crop, CLIP's
    normalisation), as FID_CLIP (Kynkaanniemi et al. 2022; clean-fid) computes it. Upsampling 32x32 to
    224 the two differ by up to ~0.09 normalised units and ~0.7% in the features.
    """

    name = "clip"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", **kw):
        super().__init__()
        import open_clip

        self._config = {"model": model, "pretrained": pretrained, **{k: str(v) for k, v in kw.items()}}
        try:
            self.net = open_clip.create_model(model, pretrained=pretrained,
                                              force_quick_gelu=pretrained == "openai", **kw)
        except RuntimeError as e:
            raise MMDLibError(f"clip: could not load open_clip {model!r} with pretrained={pretrained!r} "
                              f"(offline with no cached copy?): {e}") from e
        self.input_size = self.net.visual.image_size
        self.input_size = self.input_size[0] if isinstance(self.input_size, (tuple, list)) else self.input_size
        self.register_buffer("mean", torch.tensor(self.net.visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.net.visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1))
        self.dim = self.net.visual.output_dim
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.preprocess = image_transform_v2(PreprocessCfg(**self.net.visual.preprocess_cfg), is_train=False)
        self.freeze()

    def config(self) -> dict:
        return self._config

    def features(self, images: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        x = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False) if images.shape[-1] != s else images
        return self.net.encode_image((x - self.mean) / self.std).float()

    @torch.no_grad()
    def metric_features(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in self.pil_images(images)])
        return self.net.encode_image(x.to(self.mean.device)).float()


# --- The digits feature spaces ---------------------------------------------------------------------------

class DigitsFeatures(FeatureExtractor):
    """A small CNN trained on the digits (``classifiers.digits_classifier``: shipped with the package, hash-checked);
    its features are ``DigitsNet.raw_features``, standardised."""

    channels, size = 1, 8

    def __init__(self, name: str = "digits-a"):
        super().__init__()
        self.name = name
        self.net, self.test_accuracy, mean, std, cfg = digits_classifier(name)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.dim = cfg.hidden + sum(cfg.widths)
        self._config = dataclasses.asdict(cfg)
        self.freeze()

    def config(self) -> dict:
        return self._config

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return (self.net.raw_features(images) - self.mean) / self.std

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's 10 digit logits from features (undoing the standardisation of the first block)."""
        h = self.net.head.in_features
        f = features.to(self.mean.device, self.mean.dtype)[:, :h] * self.std[:h] + self.mean[:h]
        return self.net.head(f)


FEATURES: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": InceptionFeatures,
    "inception-spatial": InceptionSpatialFeatures,  # sFID
    "clip": ClipFeatures,
    "dinov2": DinoV2Features,  # FD_DINOv2
    "digits-a": lambda **kw: DigitsFeatures("digits-a", **kw),
    "digits-b": lambda **kw: DigitsFeatures("digits-b", **kw),
}


INCEPTION_SPACES = ("inception", "inception-spatial")  # the spaces torch-fidelity's Inception weights make
# the FID statistics an ADM reference batch (openai's guided-diffusion evaluator, VIRTUAL_imagenet64_labeled.npz
# and friends) holds for each space: (mean, covariance) keys
ADM_STATISTICS = {"inception": ("mu", "sigma"), "inception-spatial": ("mu_s", "sigma_s")}
WEIGHTS_FLAGS = {**{s: "inception_weights" for s in INCEPTION_SPACES}, "dinov2": "dinov2_weights"}  # local files


def get_feature_extractor(name: str, **kw) -> FeatureExtractor:
    """The feature extractor registered as ``name`` (see FEATURES), frozen, in eval mode."""
    if name not in FEATURES:
        raise MMDLibError(f"unknown feature space {name!r}; known feature spaces: {', '.join(FEATURES)}.")
    return FEATURES[name](**kw)


def get_feature_extractors(spaces, device=None, inception_weights: str | None = None,
                           dinov2_weights: str | None = None) -> dict[str, FeatureExtractor]:
    """The extractor of each space in ``spaces``, on ``device``; ``inception_weights`` (a local torch-fidelity
    weights file) goes to every space in ``INCEPTION_SPACES``, ``dinov2_weights`` to ``dinov2``."""
    files = {"inception_weights": inception_weights, "dinov2_weights": dinov2_weights}
    out = {}
    for s in spaces:
        path = files.get(WEIGHTS_FLAGS.get(s))
        out[s] = get_feature_extractor(s, **({"weights_path": path} if path else {})).to(device or "cpu")
    return out
