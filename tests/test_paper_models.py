"""The paper's four base models by name: downloaded from their authors (mocked: a file:// URL), checked
against the published MD5, converted and cached once; offline, the error names the URL and the place."""
import dataclasses
import hashlib
import zlib

import pytest
import torch

import ddpm_reference as ref
import mmdlib
from helpers import rel
from mmdlib import convert as cv
from mmdlib import paper_models
from mmdlib.errors import MMDLibError
from mmdlib.models import load_model
from mmdlib.paper_models import PAPER_MODELS

ARCH = ref.SMALL


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """PAPER_MODELS["cifar10"] pointing at a tiny ddpm file (its own weights in each test) served from a
    file:// URL, with its real MD5; (the entry, the URLs downloaded, the weights)."""
    src = tmp_path / "served" / "model.ckpt"
    src.parent.mkdir()
    state = ref.random_state(ch=32, seed=zlib.crc32(tmp_path.name.encode()), **ARCH)
    torch.save(state, src)
    entry = dataclasses.replace(PAPER_MODELS["cifar10"], url=src.as_uri(), size=16,
                                md5=hashlib.md5(src.read_bytes()).hexdigest(), file=f"test-{tmp_path.name}.ckpt")
    monkeypatch.setitem(PAPER_MODELS, "cifar10", entry)
    calls = []
    real = paper_models.download
    monkeypatch.setattr(paper_models, "download",
                        lambda url, dest, progress=True: calls.append(url) or real(url, dest, False))
    return entry, calls, state


def test_a_paper_model_is_downloaded_verified_converted_and_cached_once(fake_cifar10, monkeypatch):
    entry, calls, state = fake_cifar10
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    m = load_model("cifar10")
    assert calls == [entry.url] and (mmdlib.cache.cache_dir() / "downloads" / entry.file).is_file()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert rel(m.unet(x, t).sample, ref.forward(state, x, t, **ARCH)) <= 1e-5
    assert load_model("cifar10").unet.config == m.unet.config and calls == [entry.url]  # cached: no second download


def test_a_hash_mismatch_is_refused_and_nothing_is_cached(fake_cifar10, monkeypatch):
    entry, calls, _ = fake_cifar10
    monkeypatch.setitem(PAPER_MODELS, "cifar10", dataclasses.replace(entry, md5="0" * 32))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(MMDLibError, match="has MD5 [0-9a-f]{32}, not the published 0{32}: damaged in transit"):
        load_model("cifar10")
    place = mmdlib.cache.cache_dir() / "downloads" / entry.file
    assert calls == [entry.url] and not place.exists()  # a bad download is not kept
    place.write_bytes(b"a file put there by hand")  # kept, and named
    with pytest.raises(MMDLibError, match=f"{place} has MD5 .* Delete it"):
        load_model("cifar10")
    assert place.exists()
    assert not list((mmdlib.cache.cache_dir() / "converted").glob("*/config.json")) or all(
        "0" * 32 not in p.read_text() for p in (mmdlib.cache.cache_dir() / "converted").glob("*/config.json"))


def test_offline_or_unreachable_names_the_url_and_where_to_put_the_file(fake_cifar10, monkeypatch, tmp_path):
    entry, calls, _ = fake_cifar10
    place = mmdlib.cache.cache_dir() / "downloads" / entry.file
    with pytest.raises(MMDLibError, match=f"offline.*{entry.url}.*{place}.*--model /path/to"):
        load_model("cifar10")  # HF_HUB_OFFLINE=1 in the tests
    assert not calls
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setitem(PAPER_MODELS, "cifar10", dataclasses.replace(entry, url=(tmp_path / "gone").as_uri()))
    with pytest.raises(MMDLibError, match="could not download model 'cifar10' from file:.*gone"):
        load_model("cifar10")
    assert not place.exists() and not list(place.parent.glob(f".{entry.file}-*"))  # no partial file left


def test_a_file_put_in_the_named_place_by_hand_is_used_offline(fake_cifar10):
    entry, calls, _ = fake_cifar10
    place = mmdlib.cache.cache_dir() / "downloads" / entry.file
    place.parent.mkdir(parents=True, exist_ok=True)
    place.write_bytes(open(entry.url.removeprefix("file://"), "rb").read())
    assert load_model("cifar10").T == 1000 and not calls


def test_every_paper_model_is_registered_with_its_authors_url():
    assert set(PAPER_MODELS) == {"cifar10", "church", "celeba64", "imagenet64"}
    for name, ck in PAPER_MODELS.items():
        assert ck.url.startswith("https://") and ck.format in cv.FORMATS and ck.ema
        assert ck.md5 is None or len(ck.md5) == 32
    assert PAPER_MODELS["imagenet64"].url.endswith("imagenet64_uncond_100M_1500K.pt")
    assert mmdlib.MODELS == ["digits", "cifar10", "church", "celeba64", "imagenet64"]

