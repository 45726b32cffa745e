import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmdlib
from mmdlib.cores import threads
from mmdlib.features import get_feature_extractor


def test_inception_float_path_equals_torch_fidelity_uint8_path(inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ref = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    ours = get_feature_extractor("inception", weights_path=inception_weights)
    assert ours.dim == 2048
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 3, 32, 32), (2, 1, 8, 8)]:
        u8 = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        expected = ref(u8.expand(-1, 3, -1, -1))[0]
        got = ours(u8.float() / 255)
        assert expected.abs().mean() > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sfid_space_is_mixed_6_conv_first_7_channels_and_sfid_is_fid_there(inception_weights):
    # reference: torch-fidelity's own uint8 forward with a hook on Mixed_6d's 1x1 branch (the TF graph's
    # mixed_6/conv), its first 7 of 192 channels at 17x17, flattened as the ADM evaluator does (NHWC); the
    # Frechet distance brute-forced with numpy and scipy
    import warnings

    import numpy as np
    from scipy import linalg
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ref = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    grabbed = []
    ref.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.append(o))
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(2)]
    ours = get_feature_extractor("inception-spatial", weights_path=inception_weights)
    assert ours.dim == 2023 and "inception-spatial" in mmdlib.FEATURES
    feats = []
    for x in images:
        with torch.no_grad():
            ref(x)
        full = grabbed.pop()
        assert full.shape == (12, 192, 17, 17)
        want = full[:, :7].permute(0, 2, 3, 1).flatten(1)  # NHWC order, as TF flattens
        got = ours.metric_features(x.float() / 255)
        assert got.shape == (12, 2023)
        # the same numbers in the same order (ADM's), so statistics are exchangeable with its reference batches
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        feats.append(got.double())
    from mmdlib.metrics import fid_from_features

    a, b = (f.numpy() for f in feats)
    ma, mb, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # 12 samples in 2023 dimensions: singular covariances, still a valid check
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(ca @ cb).real
    brute = float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * covmean))
    assert fid_from_features(*feats) == pytest.approx(brute, rel=1e-3)


def test_inception_is_differentiable_and_frozen(inception_weights):
    f = get_feature_extractor("inception", weights_path=inception_weights)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    f(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in f.parameters()) and not f.training
    f.train()
    assert not f.training


def test_inception_bad_weights_path():
    with pytest.raises(mmdlib.MMDLibError, match="weights_path '/no/such.pth' is not a file"):
        get_feature_extractor("inception", weights_path="/no/such.pth")


def test_clip_on_random_weights_matches_open_clip_preprocess():
    import open_clip
    from PIL import Image

    f = get_feature_extractor("clip", pretrained=None)
    assert f.dim == 512
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    expected = f.net.encode_image(preprocess(Image.fromarray(img))[None]).detach()
    got = f(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-4)
    x = torch.rand(2, 1, 32, 32, requires_grad=True)  # grayscale, small: repeated and resized inside
    f(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_clip_metric_path_is_open_clips_own_preprocessing_on_8_bit_images():
    # FID_CLIP as its users compute it: open_clip's evaluation transform (PIL's antialiased bicubic resize)
    # on 8-bit images; the loss path (differentiable bicubic without antialiasing) differs on small images.
    import open_clip
    from PIL import Image

    f = get_feature_extractor("clip", pretrained=None)
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    u8 = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = f.net.encode_image(torch.stack([preprocess(Image.fromarray(im)) for im in u8]))
        images = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
        got = f.metric_features(images)
        loss_path = f(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (loss_path - expected).norm() > 1e-3 * expected.norm()
    gray = torch.from_numpy(u8[:, :, :, 0]).float()[:, None] / 255  # one channel: repeated to RGB like PIL's convert
    with torch.no_grad():
        want = f.net.encode_image(torch.stack([preprocess(Image.fromarray(im[:, :, 0]).convert("RGB")) for im in u8]))
        torch.testing.assert_close(f.metric_features(gray), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["digits-a", "digits-b"])
def test_digits_nets_are_accurate_and_differentiable(name):
    f = get_feature_extractor(name)
    assert f.test_accuracy >= 0.97
    test = mmdlib.digits_dataset("test")
    with torch.no_grad():
        assert (f.net(test.images).argmax(1) == test.labels).float().mean() >= 0.97
    x = test.images[:4].clone().requires_grad_()
    out = f(x)
    assert out.shape == (4, f.dim)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_digit_nets_train_on_the_cpu_under_one_thread_even_with_a_gpu(tmp_path, monkeypatch):
    # CUDA mocked on the CPU: the (smoke) classifier still trains on the CPU under one thread, so its weights are
    # the same on every machine, and its cache key says so
    import mmdlib.classifiers as classifiers
    from helpers import fake_cuda

    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    monkeypatch.setenv("MMDLIB_SMOKE", "1")  # one epoch
    sent, seen, real = fake_cuda(monkeypatch), [], classifiers.train_digits_net
    monkeypatch.setattr(classifiers, "train_digits_net",
                        lambda cfg, device: seen.append((torch.get_num_threads(), str(device))) or real(cfg, device))
    with threads(2):  # whatever the process runs with (the test workers' one thread included)
        get_feature_extractor("digits-a")
    assert seen == [(1, "cpu")] and not sent
    keys = [json.loads(p.read_text()) for p in (tmp_path / "digits-net").glob("*/config.json")]
    assert [k["threads"] for k in keys] == [1] and "device" not in keys[0]


def test_the_two_digit_spaces_see_real_digits_differently():
    # the held-out space is only a fair check if it is not the optimised one in disguise: on real test
    # digits, their pairwise distances correlate (both see digits) but far from fully, and a digit's five
    # nearest neighbours differ between them (measured: correlation 0.87, neighbour overlap 0.71)
    a, b = get_feature_extractor("digits-a"), get_feature_extractor("digits-b")
    x = mmdlib.digits_dataset("test").images[:200]
    with torch.no_grad():
        da, db = torch.cdist(a(x).double(), a(x).double()), torch.cdist(b(x).double(), b(x).double())
    i, j = torch.triu_indices(200, 200, 1)
    corr = torch.corrcoef(torch.stack([da[i, j], db[i, j]]))[0, 1].item()
    assert 0.5 < corr < 0.95
    na, nb = da.topk(6, largest=False).indices[:, 1:].tolist(), db.topk(6, largest=False).indices[:, 1:].tolist()
    overlap = sum(len(set(p) & set(q)) for p, q in zip(na, nb)) / (200 * 5)
    assert 0.3 < overlap < 0.85


def test_a_second_process_finds_the_cached_net(tmp_path, monkeypatch):
    # smoke mode trains its one-epoch classifiers on first use (the full ones ship): a second process loads them
    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path))
    first = get_feature_extractor("digits-a").test_accuracy
    code = ("import mmdlib.classifiers as p\n"
            "def boom(*a): raise SystemExit('retrained instead of loading the cache')\n"
            "p.train_digits_net = boom\n"
            "from mmdlib.features import get_feature_extractor\n"
            "print(get_feature_extractor('digits-a').test_accuracy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == first
