"""The dense tasks (detection, segmentation) as a :class:`~involution.tasks.engine.task.Task`, trained by the
shared engine (:func:`~involution.tasks.engine.loop.train`). ``metrics.json`` holds per epoch ``train_loss`` and each named loss term, and the
task's ``val_*`` metrics; ``best.safetensors`` is the epoch with the best ``val_<task.metric>``."""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ...models import create_model
from ..engine.context import dataset_size
from ..engine.recorded import initial_weights
from ..engine.run_config import required, resume_config
from ..engine.seeding import sample_seed
from ..engine.task import ModelSetup, RunContext, RunRecord, Task, TaskData
from .config import DenseConfig, resolve
from .scenes import scenes_root

# augment(image (3, H, W) float in [0, 1], target, generator=g) -> (image, target): a training augmentation
# drawing its random numbers from g (a PairedTransform of ..detection / ..segmentation)
Augment = Callable[..., tuple[Tensor, Any]]



def resume_dense_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> DenseConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    return resume_config(DenseConfig, run_dir, overrides)


class DenseTask(Task[DenseConfig]):
    """One dense task: images with per-object or per-pixel targets, a loss made of named terms (per-step means),
    and a validation metric computed by the task over the whole set."""

    config_class = DenseConfig

    def resolve(self, config: DenseConfig) -> DenseConfig:
        config = resolve(config)
        if config.task != self.name:
            raise ValueError(f"config.task is {config.task!r} but the task given is {self.name!r}")
        return config

    def data_root(self, config: DenseConfig, log: Callable[[str], None]) -> Path:
        """The data set's folder: ``--data-dir``, or the generated scenes (made on first use)."""
        return scenes_root(config, log) if config.data == "scenes" else Path(config.data_dir or "")

    @abstractmethod
    def augment(self, config: DenseConfig) -> Augment | None: ...

    def train_set(self, config: DenseConfig, data: TaskData) -> Dataset:
        return KeyedDataset(data.train, self.augment(config), seed=config.seed)

    @abstractmethod
    def collate(self, items: Sequence[tuple[Tensor, Any]]) -> Any: ...

    def build_model(self, config: DenseConfig, data: TaskData) -> ModelSetup:
        """The registry model of ``config`` for the data's classes, with the run's initial weights loaded. The
        backbone's weight file is an argument of its own, left out of ``model_kwargs``: a saved checkpoint already
        holds the weights, and rebuilding it must not need the original files."""
        kwargs = dict(config.model_kwargs)
        if config.backbone_checkpoint:
            kwargs["backbone_checkpoint"] = config.backbone_checkpoint
        return ModelSetup(create_model(required("--model", config.model), num_classes=len(data.classes),
                                       checkpoint=initial_weights(config.checkpoint), **kwargs))

    def describe_data(self, run: RunContext[DenseConfig]) -> str:
        data = run.data
        return (f"for {self.name} on {data.source}: {dataset_size(data.train)} train / {dataset_size(data.val)} val "
                "images")

    def weights_metadata(self, config: DenseConfig, data: TaskData) -> dict[str, Any]:
        return {"task": self.name, "classes": data.classes, "train_config": config.to_dict(), **data.info}

    def metrics_fields(self, run: RunContext[DenseConfig], record: RunRecord) -> dict[str, Any]:
        cfg = run.config
        return {"task": self.name, "model": cfg.model, "data": cfg.data, "data_source": run.data.source,
                "classes": run.data.classes, "metric": self.metric,
                "best_val": record.best if record.best > -math.inf else None}


class KeyedDataset(Dataset):
    """A data set indexed by ``(epoch, index)`` keys (:class:`~involution.tasks.engine.distributed.ResumableSampler`)
    whose augmentation is seeded by ``(seed, epoch, index)``: the same sample gets the same augmentation whatever
    the worker count, and a resumed run continues exactly. Plain integer indices give un-augmented samples."""

    def __init__(self, base: Dataset, augment: Augment | None, seed: int = 0) -> None:
        self.base, self.augment, self.seed = base, augment, seed

    def __len__(self) -> int:
        return dataset_size(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Any]:
        if isinstance(key, tuple):
            epoch, index = key
            image, target = self.base[index]
            if self.augment is not None:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
                image, target = self.augment(image, target, generator=generator)
            return image, target
        return self.base[key]
