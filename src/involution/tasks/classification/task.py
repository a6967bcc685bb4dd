"""Classification as a :class:`~involution.tasks.engine.task.Task` (digits / Fashion-MNIST / CIFAR-10 / image
folders, cross-entropy, top-1/top-5, a test split scored once at the end), its evaluation, and ``train``: from a
:class:`TrainConfig` to a finished (or cleanly stopped) run directory, through the shared engine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ...layers import check_kernel_reach
from ...models import count_flops, create_model
from ...models.checkpoint_checks import apply_data_spec
from .._metrics import confusion_matrix
from ..engine.distributed import DistInfo, all_reduce_sum
from ..engine.loop import TrainResult
from ..engine.loop import train as train_task
from ..engine.recorded import initial_weights
from ..engine.run_config import required
from ..engine.run_config import resume_config as resume_task_config
from ..engine.runtime import StopFlag, autocast, convert_sync_bn, to_device
from ..engine.task import EvalContext, ModelSetup, RunContext, RunRecord, Task, TaskData
from .config import ClassifierConfig, TrainConfig, resolve
from .data import DataSpec, load_splits, subsample_train
from .transforms import AugmentedDataset, build_transforms

ClassifierConfigT = TypeVar("ClassifierConfigT", bound=ClassifierConfig)


class Progress(Protocol):
    """A progress bar (tqdm's): advanced once per batch."""

    def update(self, n: int = 1) -> object: ...


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    return resume_task_config(TrainConfig, run_dir, overrides)


def train(
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_flag: StopFlag | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train a classifier; returns where the run was written and its final metrics.

    Args:
        config: what to train (None: the default, RedNet on digits). Fields left ``None`` come from the recipe.
        out: the run directory (default: a new ``runs/train-<time>``); with ``resume`` the one to continue.
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.
        progress: show tqdm progress bars (rank 0 only).
        stop_flag: what asks the run to stop (default: Ctrl-C and SIGTERM, which save and stop).
        quiet: print nothing (studies run many short runs under their own progress bar).
        overwrite: start afresh in an ``out`` that holds an earlier run's files, replacing them (without it such
            an ``out`` is refused with FileExistsError).
    """
    return train_task(ClassificationTask(), config or TrainConfig(), out, resume, progress, stop_flag, quiet,
                      overwrite)


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
    progress: Progress | None = None,
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
            progress.update(1)
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


def _macs_per_image(cfg: TrainConfig, spec: DataSpec) -> int | None:
    """Forward multiply-adds per image, counted on a meta-device copy (the trained model is never run for it)."""
    try:
        size = required("--image-size", cfg.image_size)
        return count_flops(required("--model", cfg.model), (1, spec.in_chans, size, size),
                           num_classes=spec.num_classes, in_chans=spec.in_chans, **cfg.model_kwargs).macs
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return None


def _spec(data: TaskData) -> DataSpec:
    spec = data.info["spec"]
    assert isinstance(spec, DataSpec)  # what load_data recorded
    return spec


class ClassifierTask(Task[ClassifierConfigT]):
    """What every classifier's task shares (of images, :class:`ClassificationTask`, or of clips,
    :class:`~involution.tasks.video.task.VideoTask`): one preparation of the model (memory format, SyncBatchNorm,
    optimizer, compilation), cross-entropy with label smoothing, top-1 / top-5 accuracy, a test split scored at
    the end, and the run's reports. ``data.info["spec"]`` is the run's :class:`~.data.DataSpec`."""

    metric = "acc"
    metric_label = "top-1 accuracy (%)"
    memory_format: ClassVar[torch.memory_format] = torch.channels_last  # what --channels-last gives the model

    def prepare_model(self, setup: ModelSetup, config: ClassifierConfigT, device: torch.device,
                      info: DistInfo) -> ModelSetup:
        model, channels_last = setup.model, bool(config.channels_last)
        if channels_last:  # its batches follow (to_device: 4-D ones channels_last, 5-D ones channels_last_3d)
            model = model.to(memory_format=self.memory_format)
        if config.sync_bn and info.enabled:
            if device.type != "cuda":
                raise ValueError("--sync-bn needs GPUs: SyncBatchNorm does not run on CPU tensors (drop --sync-bn)")
            model = convert_sync_bn(model)
        return replace(setup, model=model, channels_last=channels_last, optimizer=config.optimizer or "sgd",
                       nesterov=bool(config.nesterov),
                       compile_backend=config.compile_backend if config.compile else None,
                       criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing or 0.0))

    def loss(self, net: nn.Module, batch: Any,
             run: RunContext[ClassifierConfigT]) -> tuple[Tensor, dict[str, float], float]:
        images, labels = to_device(batch, run.device, run.setup.channels_last)
        logits = net(images)
        assert run.setup.criterion is not None  # prepare_model made it
        loss = run.setup.criterion(logits.float(), labels)
        correct = (logits.detach().argmax(dim=1) == labels).sum().item()
        return loss, {"correct": float(correct)}, float(labels.numel())

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        count = max(totals.get("count", 0.0), 1.0)
        return {"train_loss": totals.get("loss", 0.0) / count, "train_acc": totals.get("correct", 0.0) / count}

    def evaluate(self, model: nn.Module, loader: DataLoader, context: EvalContext) -> dict[str, float]:
        result = evaluate(model, loader, context.device, context.info, _spec(context.data).num_classes, context.amp,
                          context.channels_last)
        return {"loss": result.loss, "acc": result.acc, "top5": result.top5}

    def no_validation(self) -> dict[str, float]:
        return dict.fromkeys(("val_loss", "val_acc", "val_top5"), float("nan"))

    def epoch_scores(self, row: dict[str, Any]) -> str:
        return f"  train acc {100 * row['train_acc']:.2f}%  val acc {100 * row['val_acc']:.2f}%"

    def final_metrics(self, run: RunContext[ClassifierConfigT], record: RunRecord) -> dict[str, Any]:
        test = evaluate(run.net, run.test_loader, run.device, run.info, _spec(run.data).num_classes, run.config.amp,
                        run.setup.channels_last)
        return {"test_acc": test.acc, "test_top5": test.top5, "test_loss": test.loss, "test_count": test.count}

    def weights_metadata(self, config: ClassifierConfigT, data: TaskData) -> dict[str, Any]:
        return {"data_spec": _spec(data).to_dict(), "train_config": config.to_dict()}

    def metrics_fields(self, run: RunContext[ClassifierConfigT], record: RunRecord) -> dict[str, Any]:
        return {"model": run.config.model, "data": run.config.data,
                "macs": run.setup.macs,  # forward multiply-adds per sample
                "best_val_acc": record.best if record.best > -1.0 else -1.0}

    def extra_state(self, data: TaskData) -> dict[str, Any]:
        return {"data_spec": json.dumps(_spec(data).to_dict())}


class ClassificationTask(ClassifierTask[TrainConfig]):
    """Image classification: digits / Fashion-MNIST / CIFAR-10 / image folders."""

    name = "classify"
    config_class = TrainConfig

    @property
    def command(self) -> str:
        return "train"

    @property
    def run_prefix(self) -> str:
        return "train"

    def resolve(self, config: TrainConfig) -> TrainConfig:
        return resolve(config)

    def load_data(self, config: TrainConfig, log: Callable[[str], None]) -> TaskData:
        splits = subsample_train(load_splits(config.data, config.data_dir, required("--image-size", config.image_size),
                                             required("--val-fraction", config.val_fraction)),
                                 config.train_fraction, config.seed)
        test = None if splits.test is splits.val else splits.test
        return TaskData(splits.train, splits.val, splits.spec.classes, config.data, {"spec": splits.spec}, test)

    def train_set(self, config: TrainConfig, data: TaskData) -> Dataset:
        train_tf, _ = build_transforms(_spec(data), config.augment)
        return AugmentedDataset(data.train, train_tf, seed=config.seed)

    def eval_set(self, config: TrainConfig, data: TaskData, split: Dataset) -> Dataset:
        _, eval_tf = build_transforms(_spec(data), config.augment)
        return AugmentedDataset(split, eval_tf)

    def build_model(self, config: TrainConfig, data: TaskData) -> ModelSetup:
        spec = _spec(data)
        model = create_model(required("--model", config.model), num_classes=spec.num_classes, in_chans=spec.in_chans,
                             checkpoint=initial_weights(config.checkpoint), **config.model_kwargs)
        check_kernel_reach(model, (spec.image_size, spec.image_size))
        # the preprocessing this run trains with, not the family's defaults: saved with the weights (and export's
        # example input follows it)
        apply_data_spec(model, spec.to_dict(), f"--data {config.data}")
        return ModelSetup(model, macs=_macs_per_image(config, spec))

    def describe_data(self, run: RunContext[TrainConfig]) -> str:
        return f"on {run.config.data}: {run.train_size} train images"

    def final_message(self, run: RunContext[TrainConfig], record: RunRecord, final: dict[str, Any]) -> str:
        return (f"test accuracy {100 * final['test_acc']:.2f}% (top-5 {100 * final['test_top5']:.2f}%, "
                f"{final['test_count']} images); best val {100 * record.best:.2f}% at epoch {record.best_epoch}; "
                f"run written to {record.run_dir}")
