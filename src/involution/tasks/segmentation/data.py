"""Semantic-segmentation data: the library's generic folder layout and Cityscapes, detected from the files.

Generic layout (what :func:`involution.tasks.dense.scenes.make_scenes` writes; bring your own the same way)::

    ROOT/images/<split>/NAME.png|jpg     RGB images
    ROOT/labels/<split>/NAME.png         uint8 (L or P mode) class indices 0..K-1, 255 = ignore
    ROOT/classes.json                    ["class 0", ..., "class K-1"] (or {"classes": [...]}); the scene sets
                                         have "background" as class 0

Cityscapes layout (labels made by cityscapesscripts' ``createTrainIdLabelImgs``; 19 classes, 255 = ignore)::

    ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._images import open_image, read_image
from ..dense.paired import PairedDataset, PairedTransform

__all__ = ["CITYSCAPES_CLASSES", "IGNORE_INDEX", "SegmentationAugment", "SegmentationFolderDataset",
           "segmentation_collate"]

IGNORE_INDEX = 255
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = (
    "generic: ROOT/images/<split>/NAME.png|jpg, ROOT/labels/<split>/NAME.png (uint8 class indices, 255 = ignore), "
    "ROOT/classes.json; or Cityscapes: ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png with "
    "ROOT/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png"
)


class SegmentationFolderDataset(PairedDataset):
    """Images and per-pixel labels of ``root``'s ``split``, generic or Cityscapes layout (detected).

    Item ``(image, label)``: ``image`` float32 ``(3, H, W)`` in [0, 1], ``label`` int64 ``(H, W)`` with class
    indices ``0..num_classes-1`` and :data:`IGNORE_INDEX` (255) for pixels to ignore. ``transforms(image, label)
    -> (image, label)`` runs last (a :class:`SegmentationAugment` also gets the sample index, for seeding).
    Attributes: ``classes``, ``num_classes``, ``ignore_index``, ``layout`` ("generic" or "cityscapes"), ``samples``
    (pairs of paths).
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self, root: str | os.PathLike, split: str, transforms: Callable[..., tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transforms = transforms
        if (self.root / "images" / split).is_dir():
            self.layout = "generic"
            self.classes = _read_classes(self.root / "classes.json")
            self.samples = _generic_samples(self.root, split)
        elif (self.root / "leftImg8bit" / split).is_dir():
            self.layout = "cityscapes"
            self.classes = list(CITYSCAPES_CLASSES)
            self.samples = _cityscapes_samples(self.root, split)
        else:
            raise FileNotFoundError(
                f"no {split!r} split under {self.root}: neither {self.root / 'images' / split} nor "
                f"{self.root / 'leftImg8bit' / split} exists (expected layouts: {LAYOUTS})"
            )
        if not self.samples:
            raise FileNotFoundError(f"no images in the {split!r} split of {self.root} (expected layouts: {LAYOUTS})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        im = open_image(label_path)
        if im.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"{label_path}: labels must be single-channel class indices (L or P mode), got mode {im.mode}")
        label = np.asarray(im).astype(np.int64)
        size = tuple(image.shape[1:])
        if label.shape != size:
            raise ValueError(f"{label_path}: label is {label.shape} (H, W), its image {image_path} is {size}")
        return self.apply_transforms(image, torch.from_numpy(label), index)


def _read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path} (a JSON list of class names; layouts: {LAYOUTS})")
    values = json.loads(path.read_text())
    if isinstance(values, dict):
        values = values.get("classes")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{path}: expected a non-empty JSON list of class names (or {{\"classes\": [...]}})")
    return values


def _generic_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    label_dir = root / "labels" / split
    if not label_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_dir} (expected layouts: {LAYOUTS})")
    samples = []
    for image in sorted((root / "images" / split).iterdir()):
        if image.suffix.lower() not in IMAGE_EXTENSIONS or image.name.startswith("."):
            continue
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise FileNotFoundError(f"no label for {image}: expected {label}")
        samples.append((image, label))
    return samples


def _cityscapes_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    samples = []
    for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        prefix = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / image.parent.name / f"{prefix}_gtFine_labelTrainIds.png"
        if not label.is_file():
            raise FileNotFoundError(
                f"no label for {image}: expected {label} (made by cityscapesscripts' createTrainIdLabelImgs)"
            )
        samples.append((image, label))
    return samples


class SegmentationAugment(PairedTransform):
    """Joint random scale, crop and horizontal flip of ``(image (3, H, W) float, label (H, W) int64)``.

    ``scale``: (min, max) factor drawn uniformly, image resized bilinearly and label by nearest neighbour (None:
    no scaling). ``crop_size``: (h, w) or an int: a random crop, padding first where the image is smaller (image
    with 0, label with ``ignore_index``). ``flip``: probability of a left-right flip. Seeded per sample from
    ``(seed, epoch, index)`` (see :mod:`involution.tasks.dense.paired`).
    """

    def __init__(
        self, flip: float = 0.5, scale: tuple[float, float] | None = None,
        crop_size: int | tuple[int, int] | None = None, seed: int | None = 0, ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(seed)
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip must be a probability in [0, 1], got {flip}")
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.flip = flip
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        self.ignore_index = ignore_index

    def __call__(self, image: Tensor, label: Tensor, key: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        g = self.generator(key, generator)
        draws = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        if self.scale is not None:
            factor = self.scale[0] + draws[0] * (self.scale[1] - self.scale[0])
            h, w = image.shape[-2:]
            size = (max(1, round(h * factor)), max(1, round(w * factor)))
            if size != (h, w):
                image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                                        antialias=factor < 1)[0].clamp_(0, 1)
                label = torch.nn.functional.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.crop_size is not None:
            ch, cw = self.crop_size
            h, w = image.shape[-2:]
            ph, pw = max(0, ch - h), max(0, cw - w)
            if ph or pw:
                image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0.0)
                label = torch.nn.functional.pad(label, (0, pw, 0, ph), value=self.ignore_index)
            h, w = image.shape[-2:]
            top = min(h - ch, math.floor(draws[1] * (h - ch + 1)))
            left = min(w - cw, math.floor(draws[2] * (w - cw + 1)))
            image = image[:, top : top + ch, left : left + cw]
            label = label[top : top + ch, left : left + cw]
        if draws[3] < self.flip:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


def segmentation_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack equal-size samples: images ``(N, 3, H, W)``, labels ``(N, H, W)``."""
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"images of different sizes in one batch: {sorted(sizes)}; crop them to one size "
            "(SegmentationAugment(crop_size=...)) or use batch_size=1"
        )
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)
