"""Clip classification as a :class:`~involution.tasks.engine.task.Task`: the direction of a moving item (made by
:mod:`.data`), a 3-D network (``video_rednet_tiny`` / ``video_resnet_tiny``), the classification task's
cross-entropy, top-1 accuracy and test split; ``train``: from a :class:`VideoConfig` to a run directory through the
shared engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ...models import create_model
from ..classification.data import DataSpec
from ..classification.task import ClassificationTask
from ..engine.distributed import DistInfo
from ..engine.loop import TrainingLoop, TrainResult
from ..engine.loop import train as train_task
from ..engine.recorded import initial_weights
from ..engine.run_config import resume_config as resume_task_config
from ..engine.runtime import StopFlag, convert_sync_bn
from ..engine.task import TaskData
from .config import VideoConfig, resolve
from .data import load_clips

NAME = {"digits": "moving-digits", "fashion-mnist": "moving-fashion-mnist"}


def train(config: VideoConfig | None = None, out: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, stop_flag: StopFlag | None = None, quiet: bool = False,
          overwrite: bool = False) -> TrainResult:
    """Train a clip classifier (default: ``video_rednet_tiny`` on moving digits); arguments as
    :func:`involution.tasks.classification.train`."""
    return train_task(VideoTask(), config or VideoConfig(), out, resume, progress, stop_flag, quiet, overwrite)


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> VideoConfig:
    """The config of the video run in ``run_dir`` with ``overrides`` applied."""
    return resume_task_config(VideoConfig, run_dir, overrides)


class VideoTask(ClassificationTask):
    """Classification of clips ``(1, T, H, W)`` by direction of motion; everything after the data and the model
    (loss, accuracy, test split, reports) is :class:`ClassificationTask`'s."""

    name = "video"
    config_class = VideoConfig  # type: ignore[assignment]
    command = "train-video"  # type: ignore[assignment]
    run_prefix = "video"  # type: ignore[assignment]

    def resolve(self, config: VideoConfig) -> VideoConfig:  # type: ignore[override]
        return resolve(config)

    def load_data(self, config: VideoConfig, log: Callable[[str], None]) -> TaskData:  # type: ignore[override]
        spec = config.clip_spec()
        counts = (config.train_clips, config.val_clips, config.test_clips)
        clips = load_clips(config.data, config.data_dir, spec, counts, config.seed)  # type: ignore[arg-type]
        data_spec = DataSpec(NAME[config.data], spec.classes, 1, spec.canvas, [clips.mean], [clips.std])
        return TaskData(clips.train, clips.val, spec.classes, NAME[config.data], {"spec": data_spec}, clips.test)

    def train_set(self, config: VideoConfig, data: TaskData) -> Dataset:  # type: ignore[override]
        return data.train  # keyed by (epoch, index): each epoch draws new motions

    def eval_set(self, config: VideoConfig, data: TaskData, split: Dataset) -> Dataset:  # type: ignore[override]
        return split

    def build_model(self, config: VideoConfig, data: TaskData) -> nn.Module:  # type: ignore[override]
        return create_model(config.model, num_classes=len(data.classes), in_chans=1,  # type: ignore[arg-type]
                            checkpoint=initial_weights(config.checkpoint), **config.model_kwargs)

    def prepare_model(self, model: nn.Module, config: VideoConfig, device: torch.device,  # type: ignore[override]
                      info: DistInfo) -> nn.Module:
        self.channels_last = bool(config.channels_last)  # batches follow: to_device makes 5-D ones channels_last_3d
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        if config.sync_bn and info.enabled:
            model = convert_sync_bn(model)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing or 0.0)
        return model

    def describe_data(self, run: TrainingLoop) -> str:
        cfg = run.config
        return (f"on {run.data.source}: {len(run.sampler.dataset)} clips per epoch of {cfg.frames} x {cfg.image_size}"
                f" x {cfg.image_size}, {cfg.directions} directions")

    def final_message(self, run: TrainingLoop, final: dict[str, Any]) -> str:
        return (f"test accuracy {100 * final['test_acc']:.2f}% ({final['test_count']} clips); best val "
                f"{100 * run.best:.2f}% at epoch {run.best_epoch}; run written to {run.run_dir}")

    def weights_metadata(self, config: VideoConfig, data: TaskData) -> dict[str, Any]:  # type: ignore[override]
        return {"data_spec": data.info["spec"].to_dict(), "train_config": config.to_dict()}
