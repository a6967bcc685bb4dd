"""Detection as a :class:`~involution.tasks.dense.task.DenseTask`: COCO-format data, torchvision detectors, COCO AP.

Data: ``scenes`` (generated on first use from Fashion-MNIST or digits, see :mod:`involution.tasks.dense.scenes`) or
``coco`` (``--data-dir ROOT`` holding ``train2017/``, ``val2017/`` and ``annotations/instances_{train,val}2017.json``,
or the scene layout ``images/<split>/`` + ``annotations/instances_<split>.json``). Validation reports pycocotools'
box AP (and mask AP for Mask R-CNN) as fractions; ``bbox_AP`` (IoU 0.50:0.95) picks the best checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..dense.config import DenseConfig
from ..dense.task import DenseTask
from ..engine.capabilities import Predicts
from ..engine.distributed import all_gather_objects
from ..engine.plots import PALETTE
from ..engine.runtime import autocast, to_device
from ..engine.state import unwrap_model
from ..engine.task import EvalContext, RunContext, TaskData
from .data import CocoDetectionDataset, RandomHorizontalFlip, detection_collate
from .metrics import coco_evaluate

REPORTED = ("AP", "AP50", "AP75")  # per IoU type, in the run's history


def has_masks(model_name: str) -> bool:
    return model_name.startswith("maskrcnn")


def coco_split(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split`` under a COCO-2017 root or a scene-layout root."""
    year = root / "annotations" / f"instances_{split}2017.json"
    if year.is_file():
        return root / f"{split}2017", year
    return root / "images" / split, root / "annotations" / f"instances_{split}.json"


class DetectionTask(DenseTask, Predicts):
    name = "detect"
    metric = "bbox_AP"
    metric_label = "box AP (%)"

    def load_data(self, config: DenseConfig, log: Callable[[str], None]) -> TaskData:
        root = self.data_root(config, log)
        masks = has_masks(config.model or "")
        sets = [CocoDetectionDataset(*coco_split(root, split), masks=masks) for split in ("train", "val")]
        classes = sets[0].category_names
        if sets[1].category_ids != sets[0].category_ids:
            raise ValueError(f"{root}: the train and val annotation files list different categories")
        return TaskData(sets[0], sets[1], classes, str(root), info={"masks": masks})

    def augment(self, config: DenseConfig) -> Callable[..., Any]:
        return RandomHorizontalFlip(0.5)

    def collate(self, items: Sequence[tuple[Tensor, Any]]) -> Any:
        return detection_collate(items)

    def loss(self, net: nn.Module, batch: Any,
             run: RunContext[DenseConfig]) -> tuple[Tensor, dict[str, float], float]:
        images, targets = to_device(batch, run.device)
        losses: dict[str, Tensor] = net(images, targets)
        terms = list(losses.values())
        total = terms[0]
        for term in terms[1:]:  # summed in order, as Python's sum() did
            total = total + term
        return total, {k: float(v.detach()) for k, v in losses.items()}, 1.0

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, context: EvalContext) -> dict[str, float]:
        data, info = context.data, context.info
        predictions = predict_batches(unwrap_model(model), loader, context.device, context.amp, context.progress)
        gathered = all_gather_objects(predictions, info)
        metrics: dict[str, float] = {}
        if info.is_main:
            merged = [p for part in gathered for p in cast(list[dict[str, Any]], part)]  # each process's list
            dataset = data.val
            assert isinstance(dataset, CocoDetectionDataset)  # what load_data made
            iou_types = ("bbox", "segm") if data.info.get("masks") else ("bbox",)
            result = coco_evaluate(dataset.coco, merged, dataset.label_to_category, iou_types=iou_types,
                                   image_ids=dataset.ids)
            metrics = {f"{t}_{n}": float(result[f"{t}_{n}"]) for t in iou_types for n in REPORTED}
        return cast(dict[str, float], all_gather_objects(metrics, info)[0])  # rank 0's

    @torch.no_grad()
    def predict(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        net = unwrap_model(model).eval()
        out = net([image.to(next(net.parameters()).device)])[0]
        return {k: v.cpu() for k, v in out.items()}

    def draw(self, image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
        return draw_detections(image, output, classes, threshold)


def predict_batches(model: nn.Module, loader: Any, device: torch.device, amp: str = "none",
                    progress: bool = False) -> list[dict[str, Any]]:
    """Detections of ``model`` on every batch of ``loader``: dicts with ``image_id``, ``boxes``, ``scores``,
    ``labels`` (and ``masks`` ``(n, H, W)`` bool), on the CPU."""
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="evaluating", leave=False, dynamic_ncols=True)
    out: list[dict[str, Any]] = []
    for batch in loader:
        images, targets = to_device(batch, device)
        with autocast(device, amp):
            detections = model(images)
        for det, target in zip(detections, targets):
            item = {"image_id": int(target["image_id"]), "boxes": det["boxes"].float().cpu(),
                    "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()}
            if "masks" in det:
                item["masks"] = (det["masks"][:, 0] > 0.5).cpu()
            out.append(item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    return out


def draw_detections(image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
    """Boxes (labelled with class and score) and, for Mask R-CNN, masks of the detections scoring >= threshold."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    picture = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    keep = output["scores"] >= threshold
    labels = output["labels"][keep].tolist()
    colours = [PALETTE[(label - 1) % len(PALETTE)] for label in labels]
    if "masks" in output and keep.any():
        masks = output["masks"][keep]
        masks = (masks[:, 0] if masks.dim() == 4 else masks) > 0.5
        picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=colours)
    if keep.any():
        names = [f"{classes[label - 1] if 0 < label <= len(classes) else label} {score:.2f}"
                 for label, score in zip(labels, output["scores"][keep].tolist())]
        width = max(1, round(min(image.shape[-2:]) / 128))
        picture = draw_bounding_boxes(picture, output["boxes"][keep], labels=names, colors=colours, width=width)
    return picture
