"""Semantic segmentation on torchvision's segmentation models: folder / Cityscapes data, mIoU.

>>> from involution.tasks.segmentation import SegmentationFolderDataset, SegmentationAugment, ConfusionMatrix
>>> train = SegmentationFolderDataset("data/scenes", "train", transforms=SegmentationAugment(0.5, (0.5, 2.0), 128))
>>> image, label = train[0]     # (3, H, W) in [0, 1]; (H, W) int64, 255 = ignore
"""

from .data import (
    CITYSCAPES_CLASSES,
    IGNORE_INDEX,
    LAYOUTS,
    SegmentationAugment,
    SegmentationFolderDataset,
    segmentation_collate,
)
from .metrics import ConfusionMatrix
from .task import SegmentationTask, draw_label_map

__all__ = [
    "CITYSCAPES_CLASSES",
    "ConfusionMatrix",
    "IGNORE_INDEX",
    "LAYOUTS",
    "SegmentationAugment",
    "SegmentationFolderDataset",
    "SegmentationTask",
    "draw_label_map",
    "segmentation_collate",
]
