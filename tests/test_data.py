import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import mmdlib
from mmdlib.data import get_dataset


def test_digits_splits_are_deterministic_and_disjoint():
    tr, te, al = (mmdlib.digits_dataset(s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1437, 360, 1797)
    x, y = tr[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and 0 <= y <= 9
    assert torch.equal(mmdlib.digits_dataset("train").images, tr.images)
    rows = {tuple(r) for r in tr.images.flatten(1).tolist()} & {tuple(r) for r in te.images.flatten(1).tolist()}
    from sklearn.datasets import load_digits
    raw = load_digits().images
    assert np.allclose(al.images[:, 0].numpy() * 16, raw)
    # the split is by index; a few duplicate images may exist in the data itself, but never the same index
    assert len(rows) < 5
    assert sorted(torch.bincount(te.labels).tolist())[0] >= 35  # stratified: every class in the test split


def test_unknown_dataset_and_split():
    with pytest.raises(mmdlib.MMDLibError, match="unknown dataset 'mnist'; known datasets: digits, cifar10"):
        get_dataset("mnist")
    with pytest.raises(mmdlib.MMDLibError, match="unknown split 'val'; known splits: train, test, all"):
        get_dataset("digits", split="val")


@pytest.mark.parametrize("name", ["cifar10", "celeba64", "church", "imagenet64"])
def test_missing_data_names_the_path(tmp_path, name):
    with pytest.raises(mmdlib.MMDLibError, match=f"data not found at '{tmp_path / 'nothing'}"):
        get_dataset(name, root=tmp_path / "nothing")


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = get_dataset("folder", root=tmp_path, size=16)
    x, y = ds[1]
    assert len(ds) == 3 and x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1 and y == 0
    raw = get_dataset(str(tmp_path))[2][0]
    assert torch.allclose(raw, torch.from_numpy(np.array(Image.open(tmp_path / "2.png"))).permute(2, 0, 1) / 255)


def test_church_from_a_folder(tmp_path):
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / "c.jpg")
    assert get_dataset("church", root=tmp_path)[0][0].shape == (3, 256, 256)


def test_imagenet64_npz(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (4, 3 * 64 * 64), dtype=np.uint8)
    np.savez(tmp_path / "val_data.npz", data=data, labels=np.array([1, 2, 3, 1000]))
    ds = get_dataset("imagenet64", split="test", root=tmp_path)
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and y == 999
    assert torch.allclose(x * 255, torch.from_numpy(data[3].reshape(3, 64, 64)).float())


def test_cifar10_from_torchvision_layout(tmp_path, monkeypatch):
    # torchvision's layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; md5 skipped here.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (2, 3072), dtype=np.uint8)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps({"data": data, "labels": [3, 7]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    ds = get_dataset("cifar10", root=tmp_path)
    x, y = ds[1]
    assert len(ds) == 10 and x.shape == (3, 32, 32) and y == 7
    assert torch.allclose(x * 255, torch.from_numpy(data[1].reshape(3, 32, 32)).float())
    assert len(get_dataset("cifar10", split="all", root=tmp_path)) == 12


def test_celeba_crop_is_ddim_crop():
    from mmdlib.data import CELEBA_CROP, _to_tensor_resized

    img = np.zeros((218, 178, 3), np.uint8)
    img[57:57 + 128, 25:25 + 128] = 255  # the DDIM crop window is all white, the rest black
    x = _to_tensor_resized(64, CELEBA_CROP)(Image.fromarray(img))
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.ones_like(x))


def _ddim_celeba(img: Image.Image) -> torch.Tensor:
    # the DDIM code's CelebA transform (datasets/__init__.py): Crop(x1=57, x2=185, y1=25, y2=153), i.e. rows
    # 57:185 and columns 25:153, then transforms.Resize(64) with torchvision's defaults, then ToTensor
    from torchvision import transforms

    return transforms.ToTensor()(transforms.Resize(64)(img.crop((25, 57, 153, 185))))


def test_celeba64_from_its_real_layout_equals_the_ddim_codes_transform(tmp_path, monkeypatch):
    # torchvision's layout: celeba/img_align_celeba/*.jpg and the five annotation files (md5 skipped here)
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in (1, 2, 3, 4)]
    for n in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / "img_align_celeba" / n)
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s in zip(names, (0, 0, 2, 2))))
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text("4\nimage_id x_1 y_1 width height\n"
                                                 + "".join(f"{n} 1 2 3 4\n" for n in names))
    (folder / "list_landmarks_align_celeba.txt").write_text(
        "4\n" + " ".join(f"p{i}" for i in range(10)) + "\n" + "".join(f"{n} " + " ".join(["1"] * 10) + "\n"
                                                                      for n in names))
    (folder / "list_attr_celeba.txt").write_text("4\n" + " ".join(f"a{i}" for i in range(40)) + "\n"
                                                 + "".join(f"{n} " + " ".join(["-1"] * 40) + "\n" for n in names))
    monkeypatch.setattr("torchvision.datasets.celeba.check_integrity", lambda *a, **k: True)
    train, test = get_dataset("celeba64", "train", root=tmp_path), get_dataset("celeba64", "test", root=tmp_path)
    assert len(train) == 2 and len(test) == 2
    x = train[1][0]
    assert x.shape == (3, 64, 64)
    with Image.open(folder / "img_align_celeba" / names[1]) as im:
        assert torch.allclose(x, _ddim_celeba(im.convert("RGB")), atol=1e-6)


def test_church_from_lsuns_lmdb_equals_the_ddim_codes_transform(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    import io

    from torchvision import transforms

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(3)]
    db = tmp_path / "church_outdoor_train_lmdb"
    with lmdb.open(str(db), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for i, im in enumerate(images):  # LSUN's layout: a hex key per image, webp bytes
            buf = io.BytesIO()
            im.save(buf, format="webp", lossless=True)
            txn.put(f"{i:040x}".encode(), buf.getvalue())
    ds = get_dataset("church", "train", root=tmp_path)
    x, y = ds[2]
    assert len(ds) == 3 and x.shape == (3, 256, 256) and y == 0
    # the DDIM code's LSUN transform: Resize(256), CenterCrop(256), ToTensor (torchvision's defaults)
    want = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(256), transforms.ToTensor()])(images[2])
    assert torch.allclose(x, want, atol=1e-6)
    with pytest.raises(mmdlib.MMDLibError, match="LSUN Church data not found.*download.py -c church_outdoor"):
        get_dataset("church", "test", root=tmp_path)  # no val lmdb, no images


def test_dataset_images_fast_path_equals_item_by_item():
    from mmdlib.data import TensorImages, dataset_images

    ds = TensorImages(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8))
    slow = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(dataset_images(ds), slow) and slow.max() <= 1
    picked = dataset_images(ds, n=5, seed=3)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(picked, slow[idx])
