"""Transforms of the classification task: training augmentation seeded per sample from ``(seed, epoch, index)``
(:class:`AugmentedDataset`, :mod:`~involution.tasks.engine.seeding`), and evaluation preprocessing. In-memory data
sets at their native size are augmented a whole batch at a time (:class:`ShiftFlip`), which costs next to nothing;
image folders go through torchvision's transforms one image at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._images import to_mode
from ..engine.context import dataset_size
from ..engine.seeding import sample_hashes, sample_seed
from .data import DataSpec, Subset, TensorImages

Transform = Callable[[Any], Tensor]


def _in_memory(dataset: Dataset) -> bool:
    """Whether ``dataset.take`` can gather a batch of tensors."""
    return isinstance(dataset, TensorImages) or (isinstance(dataset, Subset) and _in_memory(dataset.base))


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
        # the batched path: a ShiftFlip over tensors in memory (None: one sample at a time)
        self.batched: ShiftFlip | None = transform if isinstance(transform, ShiftFlip) and _in_memory(base) else None

    def __len__(self) -> int:
        return dataset_size(self.base)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[tuple[Tensor, int]]:
        base = self.base
        if self.batched is None or not isinstance(base, (TensorImages, Subset)):  # Subset: of TensorImages here
            return [self[key] for key in keys]
        if keys and isinstance(keys[0], tuple):
            epochs, indices = (np.asarray(column, dtype=np.int64) for column in zip(*keys))
            hashes = sample_hashes(self.seed, epochs, indices)
        else:
            indices, hashes = np.asarray(keys, dtype=np.int64), None
        images, labels = base.take(indices)
        return list(zip(self.batched(images, hashes).unbind(0), labels.tolist()))

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
    return to_mode(image, "RGB") if hasattr(image, "convert") else image


_NATIVE_SIZE = {"digits": 8, "fashion-mnist": 28, "cifar10": 32}


def build_image_transform(spec: DataSpec) -> Transform:
    """Preprocessing of an image file (PIL) for a model trained on ``spec``: mode, size, normalisation."""
    from torchvision.transforms import v2

    mode = "L" if spec.in_chans == 1 else "RGB"
    # to_mode: 16-bit images as float tensors at full precision (Pillow's convert would clip them at 255)
    steps: list[Any] = [v2.Lambda(lambda image: to_mode(image, mode))]
    if spec.eval_resize:
        steps += [v2.Resize(spec.eval_resize, antialias=True), v2.CenterCrop(spec.image_size)]
    else:
        steps.append(v2.Resize((spec.image_size, spec.image_size), antialias=True))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(steps)
