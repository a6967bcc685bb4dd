"""Clip classification as a :class:`~involution.tasks.engine.task.Task`: the direction of a moving item (made by
:mod:`.data`), a 3-D network (``video_rednet_tiny`` / ``video_resnet_tiny``), the classification task's
cross-entropy, top-1 accuracy and test split; ``train``: from a :class:`VideoConfig` to a run directory through the
shared engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ...models import create_model
from ..classification.data import DataSpec
from ..classification.task import ClassifierTask
from ..engine.loop import TrainResult
from ..engine.loop import train as train_task
from ..engine.recorded import initial_weights
from ..engine.run_config import required
from ..engine.run_config import resume_config as resume_task_config
from ..engine.runtime import StopFlag
from ..engine.task import ModelSetup, RunContext, RunRecord, TaskData
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


class VideoTask(ClassifierTask[VideoConfig]):
    """Classification of clips ``(1, T, H, W)`` by direction of motion; everything after the data and the model
    (preparation, loss, accuracy, test split, reports) is :class:`ClassifierTask`'s, as for images."""

    name = "video"
    config_class = VideoConfig
    memory_format = torch.channels_last_3d  # --channels-last on a 3-D net

    @property
    def command(self) -> str:
        return "train-video"

    @property
    def run_prefix(self) -> str:
        return "video"

    def resolve(self, config: VideoConfig) -> VideoConfig:
        return resolve(config)

    def load_data(self, config: VideoConfig, log: Callable[[str], None]) -> TaskData:
        spec = config.clip_spec()
        counts = (required("--train-clips", config.train_clips), required("--val-clips", config.val_clips),
                  required("--test-clips", config.test_clips))
        clips = load_clips(config.data, config.data_dir, spec, counts, config.seed)
        data_spec = DataSpec(NAME[config.data], spec.classes, 1, spec.canvas, [clips.mean], [clips.std])
        return TaskData(clips.train, clips.val, spec.classes, NAME[config.data], {"spec": data_spec}, clips.test)

    def train_set(self, config: VideoConfig, data: TaskData) -> Dataset:
        return data.train  # keyed by (epoch, index): each epoch draws new motions

    def build_model(self, config: VideoConfig, data: TaskData) -> ModelSetup:
        return ModelSetup(create_model(required("--model", config.model), num_classes=len(data.classes), in_chans=1,
                                       checkpoint=initial_weights(config.checkpoint), **config.model_kwargs))

    def describe_data(self, run: RunContext[VideoConfig]) -> str:
        cfg = run.config
        return (f"on {run.data.source}: {run.train_size} clips per epoch of {cfg.frames} x {cfg.image_size}"
                f" x {cfg.image_size}, {cfg.directions} directions")

    def final_message(self, run: RunContext[VideoConfig], record: RunRecord, final: dict[str, Any]) -> str:
        return (f"test accuracy {100 * final['test_acc']:.2f}% ({final['test_count']} clips); best val "
                f"{100 * record.best:.2f}% at epoch {record.best_epoch}; run written to {record.run_dir}")
