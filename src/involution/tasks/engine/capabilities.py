"""Optional abilities of a :class:`~.task.Task`, declared by the tasks that have them (not stubs that raise):
callers ask :func:`predictor` for the ability and get a clear error when the task lacks it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .task import Task


class Predicts(ABC):
    """A task whose models predict one image at a time, and which draws their predictions (detection,
    segmentation; classification reports through its own inference module)."""

    @abstractmethod
    def predict(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        """The model's output for one ``(3, H, W)`` image in [0, 1] (on the model's device), on the CPU."""

    @abstractmethod
    def draw(self, image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
        """A picture of ``output`` over ``image``: uint8 ``(3, H', W')``."""


def predictor(task: Task[Any]) -> Predicts:
    """``task`` as a :class:`Predicts`; ``TypeError`` naming the task when it cannot predict single images."""
    if not isinstance(task, Predicts):
        raise TypeError(f"the {task.name} task does not predict or draw single images")
    return task
