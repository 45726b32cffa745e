"""Datasets by name: every item is ``(image, label)`` with image float [C, H, W] in [0, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import MMDLibError

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class TensorImages(Dataset):
    """Images already in memory: uint8 or float tensors [N, C, H, W]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        self.images = images
        self.labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def float_images(self, idx=slice(None)) -> torch.Tensor:
        """Images ``idx`` (an index, slice or list) as float in [0, 1]; uint8 storage is divided by 255."""
        x = self.images[idx]
        return x.float() / 255 if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, i):
        return self.float_images(i), int(self.labels[i])


class Transformed(Dataset):
    """A dataset of PIL images (or a list of paths) with a transform to a float tensor."""

    def __init__(self, base, transform: Callable, loader: Callable | None = None):
        self.base, self.transform, self.loader = base, transform, loader

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        img, label = (self.loader(item), 0) if self.loader else item
        return self.transform(img), int(label)


class Mirrored(Dataset):
    """``base`` and its horizontal mirror images: item i < n is base[i], item n + i its mirror. Drawing
    uniformly from 2n items is drawing an image and flipping it with probability 1/2 (the official code's
    ``RandomHorizontalFlip``), reproducibly from the draw's seed, and precomputed features cover both."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i % len(self.base)]
        return (x.flip(-1) if i >= len(self.base) else x), y


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MMDLibError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}.")


def digits_dataset(split: str = "train") -> TensorImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), [1, 8, 8] in [0, 1].

    A fixed stratified 80/20 split (1,437 train, 360 test); ``all`` is every image in the original order.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    if split == "all":
        return TensorImages(images, labels)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=d.target)
    idx = torch.from_numpy(np.sort(train if split == "train" else test))
    return TensorImages(images[idx], labels[idx])


def _missing(name: str, path: Path, how: str) -> MMDLibError:
    return MMDLibError(f"{name} data not found at {str(path)!r}. {how}")


def _to_tensor_resized(size: int, crop: tuple[int, int, int, int] | None = None, mode: str = "RGB",
                       interpolation: str = "bicubic") -> Callable:
    """PIL image -> float tensor: ``mode``, an optional crop (top, left, height, width), resize of the short side
    to ``size`` (``interpolation``: "bilinear" is torchvision's default, which the DDIM code uses), centre crop."""
    from torchvision import transforms as T

    steps = [T.Lambda(lambda im: im.convert(mode))]
    if crop is not None:  # (top, left, height, width)
        steps.append(T.Lambda(lambda im: T.functional.crop(im, *crop)))
    steps += [T.Resize(size, interpolation=T.InterpolationMode(interpolation), antialias=True), T.CenterCrop(size),
              T.ToTensor()]
    return T.Compose(steps)


def cifar10_dataset(split: str = "train", root: str | Path = "data/cifar10", download: bool = False) -> Dataset:
    """CIFAR-10 (torchvision), 32x32; ``all`` is train + test."""
    from torchvision import datasets, transforms

    _check_split(split)
    if split == "all":
        return torch.utils.data.ConcatDataset([cifar10_dataset(s, root, download) for s in ("train", "test")])
    try:
        return datasets.CIFAR10(str(root), train=split == "train", download=download, transform=transforms.ToTensor())
    except RuntimeError as e:
        raise _missing("CIFAR-10", Path(root), "Pass download=True (or --download) on a connected machine, "
                       "or put torchvision's cifar-10-batches-py folder there.") from e


# DDIM's CelebA preprocessing (its datasets/__init__.py): a 128x128 crop centred at (x=89, y=121) of the aligned
# 178x218 image, then torchvision's default (bilinear) resize to 64x64.
CELEBA_CROP = (57, 25, 128, 128)


def celeba64_dataset(split: str = "train", root: str | Path = "data/celeba", download: bool = False) -> Dataset:
    """CelebA (torchvision's layout: ``root``/celeba/img_align_celeba/ and the list_*.txt files) cropped and
    resized to 64x64 as the DDIM code does."""
    from torchvision import datasets

    _check_split(split)
    try:
        base = datasets.CelebA(str(root), split={"train": "train", "test": "test", "all": "all"}[split],
                               target_type="identity", download=download)
    except RuntimeError as e:
        raise _missing("CelebA", Path(root) / "celeba", "Pass download=True on a connected machine (Google Drive "
                       "quotas often refuse it), or download 'Align&Cropped Images' (img_align_celeba.zip) and the "
                       "annotation files list_eval_partition.txt, identity_CelebA.txt, list_attr_celeba.txt, "
                       "list_bbox_celeba.txt and list_landmarks_align_celeba.txt from the CelebA page "
                       "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unpack them there.") from e
    return Transformed(base, _to_tensor_resized(64, CELEBA_CROP, interpolation="bilinear"))


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _open_image(path: Path):
    """The image at ``path``, decoded now, so a damaged file is named here rather than failing later."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for truncated, empty and non-image files
        raise MMDLibError(f"cannot read the image {str(path)!r} ({e}); fix or remove it.") from None


def folder_dataset(root: str | Path | None, size: int | None = None, split: str = "all",
                   channels: int = 3) -> Dataset:
    """Every image under ``root`` (recursively, sorted), as ``channels`` channels (3: RGB, 1: grayscale),
    resized and centre-cropped to ``size``. A file that cannot be decoded stops reading with its name."""
    from torchvision import transforms as T

    _check_split(split)
    if root is None:
        raise MMDLibError("the folder dataset needs the folder: pass --data-root DIR (root= in Python), or give the "
                          "folder itself as --dataset.")
    if channels not in (1, 3):
        raise MMDLibError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    root = Path(root)
    files = _image_files(root) if root.is_dir() else []
    if not files:
        raise _missing("image folder", root, f"Point it at a folder holding {', '.join(sorted(IMAGE_SUFFIXES))} files.")
    mode = "RGB" if channels == 3 else "L"
    transform = _to_tensor_resized(size, mode=mode) if size else \
        T.Compose([T.Lambda(lambda im: im.convert(mode)), T.ToTensor()])
    return Transformed(files, transform, loader=_open_image)


class LmdbImages(Dataset):
    """The encoded images of an lmdb database (LSUN's format: key -> webp/jpeg bytes), read with the ``lmdb``
    package (``pip install "mmdlib[lsun]"``), each through ``transform``."""

    def __init__(self, path: str | Path, transform: Callable):
        try:
            import lmdb
        except ImportError:
            raise MMDLibError("reading LSUN's lmdb needs the lmdb package: pip install \"mmdlib[lsun]\" (or lmdb), "
                              "or convert the images to a folder.") from None
        self.path, self.transform, self._env = str(path), transform, None
        try:
            with lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False) as env, \
                    env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as e:
            raise MMDLibError(f"cannot read the lmdb database {self.path!r} ({e}).") from None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):  # DataLoader workers open their own environment
        return {**self.__dict__, "_env": None}

    def __getitem__(self, i):
        import io

        import lmdb
        from PIL import Image

        if self._env is None:
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False)
        with self._env.begin() as txn:
            data = txn.get(self.keys[i])
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise MMDLibError(f"cannot decode the image under key {self.keys[i]!r} of {self.path!r} ({e}).") from None
        return self.transform(img), 0


def church_dataset(split: str = "train", root: str | Path = "data/church", download: bool = False) -> Dataset:
    """LSUN Church-outdoor at 256x256 as the DDIM code reads it (bilinear resize of the short side, centre
    crop): LSUN's ``church_outdoor_{train,val}_lmdb`` under ``root``, or a folder of images."""
    _check_split(split)
    root = Path(root)
    lmdb_name = "church_outdoor_val" if split == "test" else "church_outdoor_train"
    if (root / f"{lmdb_name}_lmdb").is_dir():
        return LmdbImages(root / f"{lmdb_name}_lmdb", _to_tensor_resized(256, interpolation="bilinear"))
    if root.is_dir() and _image_files(root):
        return folder_dataset(root, size=256)
    raise _missing("LSUN Church", root, f"Download it with LSUN's script (github.com/fyu/lsun: python3 download.py "
                   f"-c church_outdoor), unzip {lmdb_name}_lmdb.zip there and pip install \"mmdlib[lsun]\" (lmdb); or "
                   "put a folder of church images there.")


def imagenet64_dataset(split: str = "train", root: str | Path = "data/imagenet64", download: bool = False) -> Dataset:
    """Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017): the ``*.npz`` files with ``data`` [N, 12288] uint8."""
    _check_split(split)
    root = Path(root)
    pattern = {"train": "train_data_batch_*.npz", "test": "val_data.npz", "all": "*.npz"}[split]
    files = sorted(root.glob(pattern)) or (sorted(root.glob("Imagenet64_train_part*.npz")) if split == "train" else [])
    if not files:
        raise _missing("ImageNet 64x64", root, f"Download the 'Imagenet64' npz files from image-net.org (downsampled "
                       f"ImageNet, needs a login) and unpack them there; looked for {pattern}.")
    data, labels = [], []
    for f in files:
        with np.load(f) as z:
            data.append(z["data"].reshape(-1, 3, 64, 64))
            labels.append(z["labels"].astype(np.int64) - 1)  # the files count classes from 1
    return TensorImages(torch.from_numpy(np.concatenate(data)), torch.from_numpy(np.concatenate(labels)))


def dataset_images(dataset, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """All (or ``n`` seeded random) images of a dataset as one float tensor [N, C, H, W]."""
    idx = list(range(len(dataset))) if n is None or n >= len(dataset) else \
        torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    if isinstance(dataset, TensorImages):  # in memory: one indexing, no per-item loop
        return dataset.float_images(idx)
    return torch.stack([dataset[i][0] for i in idx])


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": lambda split="train", **kw: digits_dataset(split),
    "cifar10": cifar10_dataset,
    "celeba64": celeba64_dataset,
    "church": church_dataset,
    "imagenet64": imagenet64_dataset,
    "folder": lambda split="all", root=None, size=None, channels=3, **kw: folder_dataset(root, size, split, channels),
}


def get_dataset(name: str, split: str = "train", **kw) -> Dataset:
    """The dataset registered as ``name``; a path to a folder of images also works."""
    if name not in DATASETS:
        if Path(name).is_dir():
            return folder_dataset(name, kw.get("size"), split="all", channels=kw.get("channels", 3))
        raise MMDLibError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}, or a folder of images.")
    return DATASETS[name](split=split, **kw)


EMBEDDED = ("digits",)  # datasets that ship inside a package: no files, so no root


def check_root(name: str, root: str | None) -> None:
    """Refuse a data root that would be ignored: for an embedded dataset, or a dataset named by its folder."""
    if root is None:
        return
    if name in EMBEDDED:
        raise MMDLibError(f"the {name} dataset is embedded (no files to find), so --data-root {root!r} would be "
                          f"ignored; drop it, or name a dataset read from files (--dataset folder --data-root DIR).")
    if name not in DATASETS:
        raise MMDLibError(f"the dataset is the folder {name!r} itself, so --data-root {root!r} would be ignored; pass "
                          f"--dataset folder --data-root DIR, or the folder alone.")


def data_options(name: str, root: str | None = None, download: bool = False, channels: int | None = None) -> dict:
    """The keyword arguments ``get_dataset(name, ...)`` takes from run settings: where the data lives, whether
    torchvision may download it, and for a folder of images the channels to read it with (give the model's:
    grayscale stays one channel for a 1-channel model)."""
    folder = name == "folder" or name not in DATASETS
    return {**({"root": root} if root else {}), **({"download": True} if download else {}),
            **({"channels": channels} if folder and channels else {})}

