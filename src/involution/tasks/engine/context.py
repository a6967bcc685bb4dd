"""What the engine hands a task's hooks: small frozen records built by the loop, never the loop itself.

* :class:`ModelSetup`: what ``build_model`` / ``prepare_model`` decided for this run (the model, its memory format,
  its cost, how to optimise and compile it). It is returned, not kept on the task: a task object holds no per-run
  state, so one task may serve several runs.
* :class:`EvalContext`: what evaluation needs (also built outside a run, e.g. by dense inference).
* :class:`RunContext`: what the training and reporting hooks of one run need, fixed once the run is set up.
* :class:`RunRecord`: the run's outcome so far (history, best epoch), a snapshot taken when a hook asks.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .distributed import DistInfo
from .run_config import RunConfig

ConfigT = TypeVar("ConfigT", bound=RunConfig)


@dataclass
class TaskData:
    """The data sets of a run (samples before augmentation) and what the model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]  # names of the model's classes
    source: str  # where the data came from (a data set name or a folder), for the logs and metrics
    info: dict[str, Any] = field(default_factory=dict)
    test: Dataset | None = None  # scored once after the last epoch (None: no test split)


def dataset_size(data: Dataset) -> int:
    """The number of samples of ``data`` (torch's ``Dataset`` declares no ``__len__``; ours all have one)."""
    if not isinstance(data, Sized):
        raise TypeError(f"{type(data).__name__} has no length: the engine needs map-style data sets with __len__")
    return len(data)


@dataclass(frozen=True)
class ModelSetup:
    """The model of a run and what its task decided about it. ``build_model`` returns one (``macs``), and
    ``prepare_model`` a copy with the model made ready to train (memory format, SyncBatchNorm...)."""

    model: nn.Module
    macs: int | None = None  # forward multiply-adds per sample (None: not counted)
    channels_last: bool = False  # the model's memory format is channels_last(_3d): its batches follow
    optimizer: str = "sgd"  # sgd | adamw
    nesterov: bool = False  # SGD with Nesterov momentum
    compile_backend: str | None = None  # torch.compile the trained module with this backend (None: not compiled)
    criterion: nn.Module | None = None  # the training loss, for a task whose loss is one module


@dataclass(frozen=True)
class EvalContext:
    """Where and how a model is evaluated."""

    device: torch.device
    info: DistInfo
    data: TaskData
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False  # batches made channels_last, as the model is
    progress: bool = False  # a tqdm bar


@dataclass(frozen=True)
class RunContext(Generic[ConfigT]):
    """One run as its task's hooks see it, fixed once the run is set up."""

    config: ConfigT  # resolved
    data: TaskData
    setup: ModelSetup  # setup.model: the plain model
    net: nn.Module  # what is called: the model, or its DDP / compiled wrapper
    device: torch.device
    info: DistInfo
    train_size: int  # samples per epoch
    test_loader: DataLoader  # this process's shard of the test split (the validation one when there is none)
    progress: bool = False  # tqdm bars on this process

    def evaluation(self, progress: bool | None = None) -> EvalContext:
        """The :class:`EvalContext` of this run (``progress``: default the run's)."""
        return EvalContext(self.device, self.info, self.data, self.config.amp, self.setup.channels_last,
                           self.progress if progress is None else progress)


@dataclass(frozen=True)
class RunRecord:
    """What a run has done so far: its per-epoch history, its best validation score and where it is written."""

    history: tuple[dict[str, Any], ...]
    best: float  # -inf: no epoch scored yet
    best_epoch: int  # -1: none
    run_dir: Path
