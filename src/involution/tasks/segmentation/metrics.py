"""Semantic-segmentation metrics from a confusion matrix accumulated over batches (and processes).

Conventions (those of mmsegmentation's and torchvision's reference evaluations):

- pixels whose target is ``ignore_index`` are left out entirely, whatever was predicted there;
- IoU of class c = TP / (TP + FP + FN); it is NaN for a class absent from both targets and predictions, and the
  **mIoU averages over the classes present in the targets or the predictions** (IoU not NaN);
- pixel accuracy = correct pixels / counted pixels; mean accuracy = mean over the classes present in the targets
  of TP / (pixels of that class).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._metrics import confusion_matrix

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """``(num_classes, num_classes)`` int64 counts, rows = target class, columns = predicted class.

    >>> metric = ConfusionMatrix(num_classes=11)
    >>> metric.update(logits.argmax(1), labels)      # (N, H, W) each
    >>> metric.all_reduce()                          # sum over torch.distributed processes, if any
    >>> metric.compute()["mIoU"]

    The counts live in :attr:`matrix` (on ``device``): merge processes by summing it (:meth:`all_reduce`) or
    matrices by :meth:`merge`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count ``pred`` against ``target``: integer class indices of the same shape, e.g. ``(N, H, W)``.

        ``target`` holds ``0..num_classes-1`` or ``ignore_index``; ``pred`` holds ``0..num_classes-1``.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class indices (take logits.argmax(1) first)")
        device = self.matrix.device
        self.matrix += confusion_matrix(target.to(device), pred.to(device), self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this one (same classes); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over the processes of the default torch.distributed group (a no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)
        return self

    def iou(self) -> Tensor:
        """Per-class IoU, float64 ``(num_classes,)``; NaN where the class is in neither targets nor predictions."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def accuracy(self) -> Tensor:
        """Per-class accuracy (recall), float64 ``(num_classes,)``; NaN where the class is absent from targets."""
        m = self.matrix.double().cpu()
        total = m.sum(1)
        return torch.where(total > 0, m.diag() / total.clamp(min=1), torch.full_like(total, float("nan")))

    def compute(self) -> dict[str, float | list[float]]:
        """``mIoU``, ``pixel_acc``, ``mean_acc`` (floats in [0, 1]; 0 before any pixel is counted) and ``iou``
        (per-class list, NaN for absent classes)."""
        m = self.matrix.double().cpu()
        total = float(m.sum())
        iou, acc = self.iou(), self.accuracy()
        present, counted = ~iou.isnan(), ~acc.isnan()
        return {
            "mIoU": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_acc": float(m.diag().sum()) / total if total else 0.0,
            "mean_acc": float(acc[counted].mean()) if counted.any() else 0.0,
            "iou": iou.tolist(),
        }

