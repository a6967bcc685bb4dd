"""Object detection and instance segmentation on torchvision's detection models: COCO data, COCO metrics.

>>> from involution.tasks.dense.scenes import make_scenes
>>> from involution.tasks.detection import RandomHorizontalFlip, coco_evaluate, coco_scene_dataset
>>> root = make_scenes("data/scenes", source="digits")
>>> train = coco_scene_dataset(root, "train", transforms=RandomHorizontalFlip(0.5, seed=0))
>>> image, target = train[0]    # (3, H, W) in [0, 1]; boxes xyxy, labels 1..K, masks (n, H, W)
"""

from .data import (
    COCO_LAYOUT,
    CocoDetectionDataset,
    RandomHorizontalFlip,
    coco_scene_dataset,
    detection_collate,
    flip_target,
    load_coco,
)
from .metrics import METRIC_NAMES, CocoMetrics, coco_evaluate, to_coco_results
from .task import DetectionTask, draw_detections

__all__ = [
    "COCO_LAYOUT",
    "CocoDetectionDataset",
    "CocoMetrics",
    "DetectionTask",
    "METRIC_NAMES",
    "RandomHorizontalFlip",
    "coco_evaluate",
    "coco_scene_dataset",
    "detection_collate",
    "draw_detections",
    "flip_target",
    "load_coco",
    "to_coco_results",
]
