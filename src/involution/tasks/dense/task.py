"""What a dense task (detection, segmentation) tells the shared training loop: its data, model, loss and metric.

The loop in :mod:`.training` owns everything else (run directory, resume, torchrun, schedule, checkpoints,
progress); a task is a small object implementing :class:`DenseTask`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...models import create_model
from ..engine.distributed import DistInfo
from ..engine.runtime import sample_seed
from .config import DenseConfig

# augment(image (3, H, W) float in [0, 1], target, generator=g) -> (image, target): a training augmentation
# drawing its random numbers from g (a PairedTransform of ..detection / ..segmentation)
Augment = Callable[..., tuple[Tensor, Any]]


@dataclass
class DenseData:
    """The training and validation sets of a run and what the model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]  # names of the model's classes (detection: objects only; segmentation: every label)
    source: str  # where the data came from (a folder), for the logs and metrics
    info: dict[str, Any] = field(default_factory=dict)


class DenseTask(ABC):
    """One dense task. ``metric`` names the validation number (higher is better) that picks ``best.safetensors``."""

    name: str
    metric: str
    metric_label: str  # axis label of the curves' right panel, e.g. "box AP (%)"
    metric_scale: float = 100.0  # the metric times this is what the label says

    @abstractmethod
    def load_data(self, config: DenseConfig, log: Callable[[str], None]) -> DenseData: ...

    @abstractmethod
    def build_model(self, config: DenseConfig, data: DenseData) -> nn.Module: ...

    @abstractmethod
    def augment(self, config: DenseConfig) -> Augment | None: ...

    @abstractmethod
    def collate(self, items: Sequence[tuple[Tensor, Any]]) -> Any: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, device: torch.device, config: DenseConfig) -> tuple[Tensor, dict[str, float]]:
        """The training loss of one batch (a scalar) and its named parts as floats (for the logs)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, info: DistInfo, data: DenseData,
                 amp: str = "none", progress: bool = False) -> dict[str, float]:
        """Validation metrics over ``loader`` (this process's shard), combined over all processes."""

    @abstractmethod
    def predict(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        """The model's output for one ``(3, H, W)`` image in [0, 1] (on the model's device), on the CPU."""

    @abstractmethod
    def draw(self, image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
        """A picture of ``output`` over ``image``: uint8 ``(3, H', W')``."""


class KeyedDataset(Dataset):
    """A data set indexed by ``(epoch, index)`` keys (:class:`~involution.tasks.engine.distributed.ResumableSampler`)
    whose augmentation is seeded by ``(seed, epoch, index)``: the same sample gets the same augmentation whatever
    the worker count, and a resumed run continues exactly. Plain integer indices give un-augmented samples."""

    def __init__(self, base: Dataset, augment: Augment | None, seed: int = 0) -> None:
        self.base, self.augment, self.seed = base, augment, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Any]:
        if isinstance(key, tuple):
            epoch, index = key
            image, target = self.base[index]
            if self.augment is not None:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index) % 2**63)
                image, target = self.augment(image, target, generator=generator)
            return image, target
        return self.base[key]


def build_dense_model(config: DenseConfig, num_classes: int) -> nn.Module:
    """The registry model of ``config`` for ``num_classes`` classes, with the run's initial weights loaded.

    The dense builders take the weight files as arguments of their own and leave them out of ``model_kwargs``: a
    saved checkpoint already holds the weights, and rebuilding it must not need the original files.
    """
    kwargs = dict(config.model_kwargs)
    if config.backbone_checkpoint:
        kwargs["backbone_checkpoint"] = config.backbone_checkpoint
    return create_model(config.model or "", num_classes=num_classes, checkpoint=config.checkpoint, **kwargs)
