"""Top-1/top-5 evaluation of a classifier, reduced over processes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._metrics import confusion_matrix
from ..engine.distributed import DistInfo, all_reduce_sum
from ..engine.runtime import autocast, to_device


@dataclass
class EvalResult:
    loss: float
    acc: float
    top5: float
    count: int
    confusion: np.ndarray | None = None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    info: DistInfo,
    num_classes: int,
    amp: str = "none",
    channels_last: bool = False,
    confusion: bool = False,
    progress: object | None = None,
) -> EvalResult:
    """Loss, top-1 and top-5 accuracy of ``model`` over ``loader``, summed over all processes (each sample once).

    ``confusion``: also count the ``(num_classes, num_classes)`` matrix (rows: true class, columns: predicted).
    """
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = correct = correct5 = count = 0.0
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    k = min(5, num_classes)
    for batch in loader:
        images, labels = to_device(batch, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += criterion(logits, labels).item()
        top = logits.topk(k, dim=1).indices
        correct += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        count += labels.numel()
        if confusion:
            matrix += confusion_matrix(labels.cpu(), top[:, 0].cpu(), num_classes)
        if progress is not None:
            progress.update(1)  # type: ignore[attr-defined]
    loss_sum, correct, correct5, count = all_reduce_sum([loss_sum, correct, correct5, count], info, device)
    result_matrix = None
    if confusion:
        if info.enabled:
            import torch.distributed as dist

            matrix = matrix.to(device)
            dist.all_reduce(matrix)
        result_matrix = matrix.cpu().numpy()
    model.train(was_training)
    n = max(count, 1)
    return EvalResult(loss_sum / n, correct / n, correct5 / n, int(count), result_matrix)
