"""Data sets of the classification task: digits, Fashion-MNIST, CIFAR-10 and users' own image folders, read into
raw train / val / test splits (their transforms and per-sample augmentation: :mod:`.transforms`).

Nothing is ever downloaded: torchvision's data set classes are used with ``download=False`` and a missing folder
is an error that names the path and the layout expected there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...models.checkpoint_checks import check_data_spec
from ...models.registry import IMAGENET_MEAN, IMAGENET_STD
from ..engine.context import dataset_size
from .._images import open_image


@dataclass
class DataSpec:
    """What a trained model expects of its input; stored in checkpoints so ``predict`` can preprocess images.

    ``eval_resize``: shorter side before the centre crop of ``image_size`` (None: resize straight to the size).
    """

    dataset: str
    classes: list[str]
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    eval_resize: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: str | dict[str, Any], source: str | os.PathLike = "data spec",
                  in_chans: int | None = None) -> DataSpec:
        """The spec recorded by :meth:`to_dict` (a dict or its JSON), every field checked against limits
        (errors name ``source`` and the field); ``in_chans``: the model's input channels, if known."""
        return cls(**check_data_spec(values, source, in_chans))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Splits:
    """Raw splits (samples before transforms) and the spec. ``val`` may be the same data as ``test``."""

    train: Dataset
    val: Dataset
    test: Dataset
    spec: DataSpec
    train_targets: np.ndarray


class TensorImages(Dataset):
    """In-memory images ``(N, C, H, W)`` (uint8 or float in [0, 1]) and labels ``(N,)``; item: (image, label)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def take(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        """Images ``(B, C, H, W)`` and labels ``(B,)`` at ``indices``, in one indexing operation."""
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return self.images[index], self.labels[index]


class Subset(Dataset):
    def __init__(self, base: Dataset, indices: Sequence[int] | np.ndarray) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[int(self.indices[index])]

    def take(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        base = self.base
        if not isinstance(base, (TensorImages, Subset)):
            raise TypeError(f"take() needs images in memory, not a {type(base).__name__}")
        return base.take(self.indices[np.asarray(indices, dtype=np.int64)])


def load_splits(name: str, data_dir: str | os.PathLike | None, image_size: int, val_fraction: float) -> Splits:
    """The raw train / val / test splits of data set ``name``; ``val`` is held out of train (fixed, stratified)."""
    if name == "digits":
        train, test, classes = digits_splits()
    elif name == "fashion-mnist":
        train, test, classes = fashion_mnist_splits(need_data_dir(name, data_dir))
    elif name == "cifar10":
        train, test, classes = _cifar10(need_data_dir(name, data_dir))
    elif name == "imagefolder":
        return _image_folder(need_data_dir(name, data_dir), image_size, val_fraction)
    else:
        raise ValueError(f"unknown data set {name!r}")
    targets = train.labels.numpy()
    images = train.images.float() / (255.0 if train.images.dtype == torch.uint8 else 1.0)
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.std(dim=(0, 2, 3)).tolist()
    spec = DataSpec(name, classes, train.images.shape[1], image_size, mean, std)
    if val_fraction > 0:
        train_idx, val_idx = stratified_split(targets, val_fraction)
        return Splits(Subset(train, train_idx), Subset(train, val_idx), test, spec, targets[train_idx])
    return Splits(train, test, test, spec, targets)


def subsample_train(splits: Splits, fraction: float, seed: int) -> Splits:
    """``splits`` with only ``fraction`` of its training samples, stratified by class and fixed for ``seed``."""
    if fraction >= 1:
        return splits
    indices = np.arange(dataset_size(splits.train))
    try:
        _, kept = stratified_split(splits.train_targets, fraction, seed=seed)
    except ValueError as err:
        raise ValueError(
            f"--train-fraction {fraction} keeps too few of the {len(indices)} training images to hold every "
            f"class: {err}"
        ) from None
    kept = indices[kept]
    return dataclasses.replace(splits, train=Subset(splits.train, kept), train_targets=splits.train_targets[kept])


def stratified_split(targets: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``fraction`` of each class held out; fixed for a given ``seed``."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(targets))
    kept, held = train_test_split(indices, test_size=fraction, stratify=targets, random_state=seed)
    return np.sort(kept), np.sort(held)


def need_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` of the file-based data set ``name`` as a Path; errors say which layout is expected there."""
    if data_dir is None:
        raise ValueError(f"--data {name} reads files: pass --data-dir (expected layout: {_LAYOUTS[name]})")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {path} (expected layout for {name}: {_LAYOUTS[name]})")
    return path


_LAYOUTS = {
    "fashion-mnist": "DIR/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision reads them",
    "cifar10": "DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, as torchvision reads them",
    "imagefolder": "DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg (ImageNet layout; val optional)",
}
# Where the files of the data sets that are not bundled come from; nothing is ever downloaded here.
_SOURCES = {
    "fashion-mnist": ("Fashion-MNIST", ("the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist "
                                        "(data/fashion), gunzipped, into {path}/FashionMNIST/raw/")),
    "cifar10": ("CIFAR-10", ("cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted "
                             "into {path} (it unpacks to cifar-10-batches-py/)")),
}


def _not_found(name: str, path: Path) -> FileNotFoundError:
    """The error for a data folder without the files torchvision reads: the layout expected and how to get there."""
    title, source = _SOURCES[name]
    return FileNotFoundError(
        f"{title} not found (or incomplete) in the data folder {path}: expected {_LAYOUTS[name].replace('DIR', str(path))}; "
        f"put {source.format(path=path)} (nothing is downloaded)"
    )


def digits_splits() -> tuple[TensorImages, TensorImages, list[str]]:
    """scikit-learn's 8x8 digits: the fixed train and test splits (20% of each class held out) and class names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(digits.target).long()
    # the fixed train/test split: 20% of each class held out (seed 0), the same for every run
    train_idx, test_idx = stratified_split(digits.target, 0.2, seed=0)
    classes = [str(i) for i in range(10)]
    return (
        TensorImages(images[train_idx], labels[train_idx]),
        TensorImages(images[test_idx], labels[test_idx]),
        classes,
    )


def fashion_mnist_splits(path: Path) -> tuple[TensorImages, TensorImages, list[str]]:
    """Fashion-MNIST's train and test sets read from ``path`` (as torchvision lays them out), and class names."""
    from torchvision.datasets import FashionMNIST

    # accept the root, the FashionMNIST folder or its raw folder
    for root in (path, path.parent, path.parent.parent):
        if (root / "FashionMNIST" / "raw").is_dir():
            path = root
            break
    try:
        train = FashionMNIST(str(path), train=True, download=False)
        test = FashionMNIST(str(path), train=False, download=False)
    except RuntimeError:  # torchvision's message suggests download=True, which nothing here passes
        raise _not_found("fashion-mnist", path) from None
    return (
        TensorImages(train.data.unsqueeze(1), train.targets.long()),
        TensorImages(test.data.unsqueeze(1), test.targets.long()),
        list(train.classes),
    )


def _cifar10(path: Path) -> tuple[TensorImages, TensorImages, list[str]]:
    from torchvision.datasets import CIFAR10

    if (path.name == "cifar-10-batches-py") and not (path / "cifar-10-batches-py").is_dir():
        path = path.parent
    try:
        train = CIFAR10(str(path), train=True, download=False)
        test = CIFAR10(str(path), train=False, download=False)
    except RuntimeError:
        raise _not_found("cifar10", path) from None

    def tensors(ds: Any) -> TensorImages:
        return TensorImages(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return tensors(train), tensors(test), list(train.classes)


class _FolderImages(Dataset):
    """torchvision ImageFolder without transforms: item (PIL image, label)."""

    def __init__(self, root: Path) -> None:
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), loader=functools.partial(open_image, mode="RGB"))
        except (FileNotFoundError, RuntimeError) as err:
            raise FileNotFoundError(f"{root}: {err} (expected layout: {_LAYOUTS['imagefolder']})") from None
        self.classes = list(self.folder.classes)
        self.targets = np.asarray(self.folder.targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.folder[index]


def _image_folder(path: Path, image_size: int, val_fraction: float) -> Splits:
    train_dir = path / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"no train folder: {train_dir} (expected layout: {_LAYOUTS['imagefolder']})")
    train = _FolderImages(train_dir)
    eval_resize = round(image_size / 0.875)  # 224 -> 256, as the paper's test pipeline
    spec = DataSpec("imagefolder", train.classes, 3, image_size, list(IMAGENET_MEAN), list(IMAGENET_STD), eval_resize)
    if (path / "val").is_dir():
        val = _FolderImages(path / "val")
        if val.classes != train.classes:
            raise ValueError(f"{path}: train/ and val/ have different class folders ({train.classes} vs {val.classes})")
        return Splits(train, val, val, spec, train.targets)
    if val_fraction <= 0:
        raise FileNotFoundError(f"no val folder: {path / 'val'}; add one or pass --val-fraction 0.1 to hold out images")
    train_idx, val_idx = stratified_split(train.targets, val_fraction)
    held_out = Subset(train, val_idx)
    return Splits(Subset(train, train_idx), held_out, held_out, spec, train.targets[train_idx])
