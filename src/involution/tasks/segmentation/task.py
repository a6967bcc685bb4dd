"""Semantic segmentation as a :class:`~involution.tasks.dense.task.DenseTask`: label-map folders, Semantic FPN /
UPerNet, mean IoU.

Data: ``scenes`` (generated on first use; class 0 is the background) or ``folder`` (``--data-dir ROOT`` in the
generic layout ``images/<split>/`` + ``labels/<split>/`` + ``classes.json``, or the Cityscapes layout; see
:mod:`.data`). Loss: pixel-wise cross-entropy ignoring label 255, plus ``aux_weight`` times the auxiliary head's.
Validation: mIoU, pixel accuracy and mean class accuracy from one confusion matrix summed over processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..dense.config import DenseConfig
from ..dense.task import DenseTask
from ..engine.capabilities import Predicts
from ..engine.plots import PALETTE
from ..engine.runtime import autocast, to_device
from ..engine.state import unwrap_model
from ..engine.task import EvalContext, RunContext, TaskData
from .data import IGNORE_INDEX, SegmentationAugment, SegmentationFolderDataset, segmentation_collate
from .metrics import ConfusionMatrix


def normalize(images: Tensor, model: nn.Module) -> Tensor:
    """``(N, 3, H, W)`` images in [0, 1] normalised with the model's mean/std (its ``pretrained_cfg``)."""
    cfg = getattr(unwrap_model(model), "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


class SegmentationTask(DenseTask, Predicts):
    name = "segment"
    metric = "mIoU"
    metric_label = "mIoU (%)"

    def load_data(self, config: DenseConfig, log: Callable[[str], None]) -> TaskData:
        root = self.data_root(config, log)
        train, val = (SegmentationFolderDataset(root, split) for split in ("train", "val"))
        if train.classes != val.classes:
            raise ValueError(f"{root}: the train and val splits list different classes")
        return TaskData(train, val, list(train.classes), str(root), info={"layout": train.layout})

    def augment(self, config: DenseConfig) -> Callable[..., Any]:
        scale = (0.5, 2.0) if config.data == "folder" else None  # mmseg's ratio range for real scenes
        return SegmentationAugment(flip=0.5, scale=scale, crop_size=config.crop_size)

    def collate(self, items: Sequence[tuple[Tensor, Any]]) -> Any:
        return segmentation_collate(items)

    def loss(self, net: nn.Module, batch: Any,
             run: RunContext[DenseConfig]) -> tuple[Tensor, dict[str, float], float]:
        config = run.config
        images, labels = to_device(batch, run.device)
        outputs = net(normalize(images, net))
        main = F.cross_entropy(outputs["out"].float(), labels, ignore_index=IGNORE_INDEX)
        parts = {"loss_seg": float(main.detach())}
        total = main
        if "aux" in outputs and config.aux_weight:
            aux = F.cross_entropy(outputs["aux"].float(), labels, ignore_index=IGNORE_INDEX)
            parts["loss_aux"] = float(aux.detach())
            total = main + config.aux_weight * aux
        return total, parts, 1.0

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, context: EvalContext) -> dict[str, float]:
        device, info, data, amp, progress = context.device, context.info, context.data, context.amp, context.progress
        net = unwrap_model(model)
        was_training = net.training
        net.eval()
        matrix = ConfusionMatrix(len(data.classes), ignore_index=IGNORE_INDEX, device=device)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(loader), desc="evaluating", leave=False, dynamic_ncols=True)
        for images, labels in loader:
            images, labels = to_device((images, labels), device)
            with autocast(device, amp):
                logits = net(normalize(images, net))["out"]
            matrix.update(logits.argmax(dim=1), labels)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        net.train(was_training)
        if info.enabled:
            matrix.all_reduce()
        result = matrix.compute()
        return {k: float(v) for k, v in result.items() if not isinstance(v, list)}  # not the per-class "iou"

    def predict(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        net = unwrap_model(model)
        device = next(net.parameters()).device
        net.eval()
        with torch.no_grad():
            logits = net(normalize(image[None].to(device), net))["out"][0]
        probs = logits.float().softmax(dim=0)
        return {"labels": probs.argmax(dim=0).cpu(), "scores": probs.max(dim=0).values.cpu()}

    def draw(self, image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
        return draw_label_map(image, output["labels"], classes)


def draw_label_map(image: Tensor, labels: Tensor, classes: Sequence[str]) -> Tensor:
    """The image beside the image overlaid with the predicted label map (class 0, the background, left clear in
    the scene sets' convention when it is named "background")."""
    from torchvision.utils import draw_segmentation_masks

    picture = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    present = [int(c) for c in labels.unique().tolist() if not (c == 0 and classes and classes[0] == "background")]
    overlay = picture
    if present:
        masks = torch.stack([labels == c for c in present])
        overlay = draw_segmentation_masks(picture, masks, alpha=0.55, colors=[PALETTE[c % len(PALETTE)] for c in present])
    gap = torch.full((3, picture.shape[1], 2), 255, dtype=torch.uint8)
    return torch.cat([picture, gap, overlay], dim=2)
