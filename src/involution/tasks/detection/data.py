"""COCO-format detection / instance-segmentation data for torchvision's detection models.

Layout expected (COCO's own, and what :func:`involution.tasks.dense.scenes.make_scenes` writes)::

    IMAGE_DIR/<file_name of each image entry>
    ANNOTATION_JSON   {"images": [{id, file_name, width, height}], "annotations": [{id, image_id, category_id,
                       bbox [x, y, w, h], area, iscrowd, segmentation (polygons or RLE)}], "categories": [{id, name}]}

Labels: the file's category ids, sorted, are remapped to contiguous labels ``1..K`` (0 is torchvision's background);
``label_to_category`` maps them back for writing COCO results. ``num_classes`` is ``K + 1``, the number that
torchvision's detection heads take (background included).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._images import read_image
from ..dense.paired import PairedDataset, PairedTransform
from ..dense.scenes import scene_paths

__all__ = ["CocoDetectionDataset", "RandomHorizontalFlip", "coco_scene_dataset", "detection_collate", "flip_target",
           "load_coco"]

COCO_LAYOUT = (
    "IMAGE_DIR/*.png|jpg named by the images' file_name, and a COCO instances JSON (images, annotations with "
    "bbox [x, y, w, h] and segmentation, categories); scene sets: ROOT/images/<split>/ and "
    "ROOT/annotations/instances_<split>.json"
)

Target = dict[str, Any]


def load_coco(annotation_json: str | os.PathLike) -> Any:
    """A ``pycocotools.coco.COCO`` of ``annotation_json``, without pycocotools' printing."""
    from pycocotools.coco import COCO

    path = Path(annotation_json)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path} (expected: {COCO_LAYOUT})")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


class CocoDetectionDataset(PairedDataset):
    """Images and targets of a COCO instances file, in the form torchvision's detection models take.

    Item ``(image, target)``: ``image`` float32 ``(3, H, W)`` in [0, 1]; ``target`` a dict with ``boxes`` float32
    ``(n, 4)`` as ``(x1, y1, x2, y2)`` in pixels, ``labels`` int64 ``(n,)`` in ``1..K``, ``masks`` uint8 ``(n, H, W)``
    (with ``masks=True``), ``image_id`` (int, the file's id), ``area`` float32 ``(n,)`` and ``iscrowd`` int64
    ``(n,)``. Crowd annotations and boxes without area (after clipping to the image) are left out, so targets are
    fit for training; evaluation reads the full ground truth from :attr:`coco`. Images without objects are kept
    (``n = 0``).

    ``transforms(image, target) -> (image, target)`` runs last; a :class:`~involution.tasks.dense.paired.PairedTransform`
    (e.g. :class:`RandomHorizontalFlip`) also gets the sample index, for per-sample seeding.
    """

    def __init__(
        self, image_dir: str | os.PathLike, annotation_json: str | os.PathLike, masks: bool = True,
        transforms: Callable[..., tuple[Tensor, Target]] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir} (expected: {COCO_LAYOUT})")
        self.coco = load_coco(annotation_json)
        self.masks = masks
        self.transforms = transforms
        self.ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.category_to_label = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.label_to_category = {i + 1: cat for i, cat in enumerate(self.category_ids)}
        self.category_names = [self.coco.cats[cat]["name"] for cat in self.category_ids]

    @property
    def num_classes(self) -> int:
        """Categories plus background: what torchvision's ``FasterRCNN(num_classes=...)`` takes."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """The file's image entry (id, file_name, width, height) of sample ``index``."""
        return self.coco.imgs[self.ids[index]]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {info['file_name']!r} of image id {info['id']} not found in {self.image_dir}")
        image = read_image(path)
        target = self.target(index, height=image.shape[1], width=image.shape[2])
        return self.apply_transforms(image, target, index)

    def target(self, index: int, height: int | None = None, width: int | None = None) -> Target:
        """The training target of sample ``index`` (see the class docstring), without transforms."""
        info = self.image_info(index)
        height = int(info["height"] if height is None else height)
        width = int(info["width"] if width is None else width)
        anns = [a for a in self.coco.imgToAnns.get(info["id"], []) if not a.get("iscrowd", 0)]
        boxes = np.zeros((len(anns), 4), np.float32)
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[i] = (x, y, x + w, y + h)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        anns = [a for a, k in zip(anns, keep) if k]
        target: Target = {
            "boxes": torch.from_numpy(boxes[keep]).reshape(-1, 4),
            "labels": torch.tensor([self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": int(info["id"]),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }
        if self.masks:
            masks = np.zeros((len(anns), height, width), np.uint8)
            for i, ann in enumerate(anns):
                masks[i] = self.coco.annToMask(ann)
            target["masks"] = torch.from_numpy(masks)
        return target


def detection_collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Lists of images and targets: torchvision's detection models take images of different sizes."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def flip_target(target: Target, width: int) -> Target:
    """``target`` mirrored left-right in an image ``width`` pixels wide (boxes and masks; other keys kept)."""
    out = dict(target)
    boxes = target["boxes"]
    if boxes.numel():
        out["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        out["masks"] = target["masks"].flip(-1)
    return out


class RandomHorizontalFlip(PairedTransform):
    """Mirror ``(image (C, H, W), target)`` left-right with probability ``p``; boxes and masks follow.

    Seeded: a sample's draw comes from ``(seed, epoch, index)`` (see :mod:`involution.tasks.dense.paired`).
    """

    def __init__(self, p: float = 0.5, seed: int | None = 0) -> None:
        super().__init__(seed)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target, key: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Target]:
        if torch.rand((), generator=self.generator(key, generator)).item() >= self.p:
            return image, target
        return image.flip(-1), flip_target(target, image.shape[-1])


def coco_scene_dataset(
    root: str | os.PathLike, split: str, masks: bool = True,
    transforms: Callable[..., tuple[Tensor, Target]] | None = None,
) -> CocoDetectionDataset:
    """The detection data set of a scene set's (or any COCO-style root's) ``split``: ``root/images/<split>`` and
    ``root/annotations/instances_<split>.json`` (see :func:`involution.tasks.dense.scenes.make_scenes`)."""
    image_dir, _, ann_file = scene_paths(root, split)
    for path in (image_dir, ann_file):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a scene set's {split!r} split lies in ROOT/images/{split}/ and "
                f"ROOT/annotations/instances_{split}.json (make one with involution.tasks.dense.scenes.make_scenes)"
            )
    return CocoDetectionDataset(image_dir, ann_file, masks=masks, transforms=transforms)
