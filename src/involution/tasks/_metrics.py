"""Counting shared by the tasks' evaluations."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(target: Tensor, pred: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``(num_classes, num_classes)`` int64 counts of ``pred`` against ``target`` (rows: target, columns: predicted).

    ``target`` and ``pred``: integer class indices of the same shape (e.g. ``(N,)`` or ``(N, H, W)``), on one device
    (the counts' device). Positions whose target is ``ignore_index`` are left out, whatever was predicted there.

    Raises:
        ValueError: a value outside ``0..num_classes-1`` (other than ``ignore_index`` in ``target``).
    """
    k = int(num_classes)
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() == 0:
        return torch.zeros(k, k, dtype=torch.int64, device=target.device)
    for name, values in (("target", target), ("pred", pred)):
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= k:
            extra = f" or ignore_index={ignore_index}" if name == "target" else ""
            raise ValueError(f"{name} values must be in 0..{k - 1}{extra}, found {low}..{high}")
    return torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
