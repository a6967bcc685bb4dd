"""Data sets of the classification task: digits, Fashion-MNIST, CIFAR-10 and users' own image folders.

Nothing is ever downloaded: torchvision's data set classes are used with ``download=False`` and a missing folder
is an error that names the path and the layout expected there.

Training augmentation is seeded per sample from ``(seed, epoch, index)`` (:class:`AugmentedDataset`), so a sample's
crop and flip do not depend on which worker process draws it or on whether the run was interrupted and resumed.
In-memory data sets at their native size are augmented a whole batch at a time (:class:`ShiftFlip`), which costs
next to nothing; image folders go through torchvision's transforms one image at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...models.registry import IMAGENET_MEAN, IMAGENET_STD
from .._images import open_image
from ..engine.runtime import sample_seed

Transform = Callable[[Any], Tensor]


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
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        return cls(**values)

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
    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[int(self.indices[index])]

    def take(self, indices: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.base.take(self.indices[np.asarray(indices, dtype=np.int64)])  # type: ignore[attr-defined]


def _in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset.take`` can gather a batch of tensors."""
    return isinstance(dataset, TensorImages) or (isinstance(dataset, Subset) and _in_memory(dataset.base))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def sample_hashes(seed: int, epochs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 per sample from ``(seed, epoch, index)``, vectorised (splitmix64 chained)."""
    h = _splitmix64(np.full(len(indices), seed, dtype=np.uint64))
    h = _splitmix64(h ^ np.asarray(epochs, dtype=np.int64).astype(np.uint64))
    return _splitmix64(h ^ np.asarray(indices, dtype=np.int64).astype(np.uint64))


class ShiftFlip:
    """Augmentation of small in-memory images, vectorised over a batch, then normalisation.

    A shift of up to ``padding`` pixels each way (zero padding, then a crop of the original size, as torchvision's
    ``RandomCrop(size, padding)``) and, with ``flip``, a horizontal flip half of the time. Each sample's draw comes
    from ``hashes`` (one uint64 per sample, see :func:`sample_hashes`); without hashes only normalisation is applied,
    which is the evaluation transform.

    Shapes: ``(B, C, H, W)`` or ``(C, H, W)``, uint8 or float in [0, 1] -> float32 of the same shape.
    """

    batched = True

    def __init__(self, mean: Sequence[float], std: Sequence[float], padding: int = 0, flip: bool = False) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.padding = padding
        self.flip = flip

    def __call__(self, images: Tensor, hashes: np.ndarray | None = None) -> Tensor:
        if images.ndim == 3:
            return self(images.unsqueeze(0), hashes)[0]
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if hashes is not None and (self.padding or self.flip):
            x = self._shift_flip(x, torch.from_numpy(hashes.view(np.int64)))
        return (x - self.mean) / self.std

    def _shift_flip(self, x: Tensor, h: Tensor) -> Tensor:
        b, _, height, width = x.shape
        p, span = self.padding, 2 * self.padding + 1
        # three independent draws from disjoint bit ranges of the hash (>> on int64 keeps the low bits right)
        dy = (h & 0xFFFF) % span
        dx = ((h >> 16) & 0xFFFF) % span
        rows = dy[:, None] + torch.arange(height)
        cols = dx[:, None] + torch.arange(width)
        if self.flip:
            flipped = ((h >> 32) & 1).bool()
            cols = torch.where(flipped[:, None], cols.flip(1), cols)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        # advanced indices around a slice put their dims first: (B, H, W, C)
        out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


class AugmentedDataset(Dataset):
    """Applies ``transform`` to ``base[index]``'s image; training keys are ``(epoch, index)`` pairs.

    A batched transform (:class:`ShiftFlip`) over an in-memory base handles a whole batch of keys at once
    (``__getitems__``, which the DataLoader calls), each sample drawing from ``sample_hashes(seed, epoch, index)``.
    Otherwise, with a key ``(epoch, index)`` the global torch RNG is seeded from ``(seed, epoch, index)`` and
    restored afterwards, so torchvision's random transforms draw the same numbers in any process, and the
    caller's RNG stream (dropout, ...) is left untouched. A plain ``index`` applies the transform unseeded (for
    deterministic evaluation transforms).
    """

    def __init__(self, base: Dataset, transform: Transform, seed: int = 0) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.batched = getattr(transform, "batched", False) and _in_memory(base)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[Tensor, int]]:
        if not self.batched:
            return [self[key] for key in keys]
        if keys and isinstance(keys[0], tuple):
            epochs, indices = (np.asarray(column, dtype=np.int64) for column in zip(*keys))
            hashes = sample_hashes(self.seed, epochs, indices)
        else:
            indices, hashes = np.asarray(keys, dtype=np.int64), None
        images, labels = self.base.take(indices)  # type: ignore[attr-defined]
        return list(zip(self.transform(images, hashes).unbind(0), labels.tolist()))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        if self.batched:
            return self.__getitems__([key])[0]
        if isinstance(key, tuple):
            epoch, index = key
            image, label = self.base[index]
            # like torch.random.fork_rng(devices=[]) for the CPU generator, at a fraction of its cost per sample
            saved = torch.get_rng_state()
            try:
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                return self.transform(image), label
            finally:
                torch.set_rng_state(saved)
        image, label = self.base[key]
        return self.transform(image), label


# -- transforms ---------------------------------------------------------------------------------------------------


def build_transforms(spec: DataSpec, augment: bool) -> tuple[Transform, Transform]:
    """(train, eval) transforms for ``spec``'s data set; both end with float normalisation to ``(C, H, W)``."""
    from torchvision.transforms import v2

    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    size = spec.image_size
    if spec.dataset == "imagefolder":
        rgb = v2.Lambda(_to_rgb)
        train = [rgb, v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [rgb, v2.Resize(spec.eval_resize or size, antialias=True), v2.CenterCrop(size)]
        if not augment:
            train = evaluate
        return v2.Compose(train + normalize), v2.Compose(evaluate + normalize)
    # small in-memory images: pad-and-crop shifts (and flips where they keep the class)
    native = _NATIVE_SIZE[spec.dataset]
    flip = spec.dataset in ("fashion-mnist", "cifar10")
    if size == native:
        padding = max(1, size // 8) if augment else 0
        return ShiftFlip(spec.mean, spec.std, padding, flip and augment), ShiftFlip(spec.mean, spec.std)
    resize = [] if size == native else [v2.Resize(size, antialias=True)]
    train = list(resize)
    if augment:
        train.append(v2.RandomCrop(size, padding=max(1, size // 8)))
        if flip:
            train.append(v2.RandomHorizontalFlip())
    return v2.Compose(train + normalize), v2.Compose(resize + normalize)


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB") if hasattr(image, "convert") else image


_NATIVE_SIZE = {"digits": 8, "fashion-mnist": 28, "cifar10": 32}


# -- data sets ----------------------------------------------------------------------------------------------------


def load_splits(name: str, data_dir: str | os.PathLike | None, image_size: int, val_fraction: float) -> Splits:
    """The raw train / val / test splits of data set ``name``; ``val`` is held out of train (fixed, stratified)."""
    if name == "digits":
        train, test, classes = _digits()
    elif name == "fashion-mnist":
        train, test, classes = _fashion_mnist(_need_dir(name, data_dir))
    elif name == "cifar10":
        train, test, classes = _cifar10(_need_dir(name, data_dir))
    elif name == "imagefolder":
        return _image_folder(_need_dir(name, data_dir), image_size, val_fraction)
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
    indices = np.arange(len(splits.train))
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


def _need_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
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


def _digits() -> tuple[TensorImages, TensorImages, list[str]]:
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


def _fashion_mnist(path: Path) -> tuple[TensorImages, TensorImages, list[str]]:
    from torchvision.datasets import FashionMNIST

    # accept the root, the FashionMNIST folder or its raw folder
    for root in (path, path.parent, path.parent.parent):
        if (root / "FashionMNIST" / "raw").is_dir():
            path = root
            break
    try:
        train = FashionMNIST(str(path), train=True, download=False)
        test = FashionMNIST(str(path), train=False, download=False)
    except RuntimeError as err:
        raise FileNotFoundError(f"Fashion-MNIST not found under {path}: {err} (expected {_LAYOUTS['fashion-mnist']})") from None
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
    except RuntimeError as err:
        raise FileNotFoundError(f"CIFAR-10 not found under {path}: {err} (expected {_LAYOUTS['cifar10']})") from None

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
    val = Subset(train, val_idx)
    return Splits(Subset(train, train_idx), val, val, spec, train.targets[train_idx])


def build_image_transform(spec: DataSpec) -> Transform:
    """Preprocessing of an image file (PIL) for a model trained on ``spec``: mode, size, normalisation."""
    from torchvision.transforms import v2

    mode = "L" if spec.in_chans == 1 else "RGB"
    steps: list[Any] = [v2.Lambda(lambda image: image.convert(mode))]
    if spec.eval_resize:
        steps += [v2.Resize(spec.eval_resize, antialias=True), v2.CenterCrop(spec.image_size)]
    else:
        steps.append(v2.Resize((spec.image_size, spec.image_size), antialias=True))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(steps)
