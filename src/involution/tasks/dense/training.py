"""``train_dense``: the training loop of detection and segmentation, from a config to a run directory.

The loop (run directory, atomic checkpoints, exact resume, Ctrl-C, non-finite losses, torchrun) is the shared
:class:`~involution.tasks.engine.loop.TrainingLoop`, as for classification; a :class:`~.task.DenseTask` supplies the
data, model, loss and validation metric. ``metrics.json`` holds per epoch ``train_loss`` and each named loss term,
and the task's ``val_*`` metrics; ``best.safetensors`` is the epoch with the best ``val_<task.metric>``. Under
``torchrun`` validation shards the set without padding and combines the metric over processes.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models import count_params
from ..engine.distributed import DistInfo, ResumableSampler, ShardSampler, init_distributed, shutdown_distributed
from ..engine.loop import TrainingLoop, TrainResult, resume_values, saved_config
from ..engine.plots import plot_curves
from ..engine.runtime import StopFlag, lr_factor, make_scaler, seed_everything, select_device
from .config import DenseConfig, resolve
from .task import DenseData, DenseTask, KeyedDataset

DenseResult = TrainResult  # run_dir, status (finished | interrupted), metrics


def resume_dense_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> DenseConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    saved = DenseConfig.from_dict(saved_config(run_dir)).to_dict()
    return DenseConfig.from_dict(resume_values(run_dir, saved, overrides))


def train_dense(
    task: DenseTask,
    config: DenseConfig,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_flag: StopFlag | None = None,
    quiet: bool = False,
) -> DenseResult:
    """Train ``task``'s model as ``config`` says; returns the run directory, its status and final metrics.

    Args:
        task: a :class:`DenseTask` (``DetectionTask()``, ``SegmentationTask()``).
        config: what to train; ``None`` fields come from the recipe of (task, data).
        out: the run directory (default a new ``runs/<task>-<time>``); with ``resume``, the one to continue.
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.
        progress: tqdm progress bars (rank 0 only). quiet: print nothing.
    """
    info = init_distributed("cuda" if select_device(config.device, DistInfo()).type == "cuda" else "cpu")
    try:
        return _DenseRun(task, config, out, resume, progress, info, stop_flag, quiet).run()
    finally:
        shutdown_distributed()


class _DenseRun(TrainingLoop):
    def __init__(self, task: DenseTask, config: DenseConfig, out: str | os.PathLike | None, resume: bool,
                 progress: bool, info: DistInfo, stop_flag: StopFlag | None, quiet: bool) -> None:
        config = resolve(config)
        if config.task != task.name:
            raise ValueError(f"config.task is {config.task!r} but the task given is {task.name!r}")
        self.task = task
        self.command = f"{task.name} train"
        self.run_prefix = task.name
        self.score_key = f"val_{task.metric}"
        super().__init__(config, out, resume, progress, info, stop_flag, quiet)

    def setup(self) -> None:
        cfg, info = self.config, self.info
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed + info.rank)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} (global) must divide by the {info.world_size} processes")
        self.local_batch = cfg.batch_size // info.world_size
        self.data: DenseData = self.task.load_data(cfg, self.log)
        train_set = KeyedDataset(self.data.train, self.task.augment(cfg), seed=cfg.seed)
        if len(train_set) // info.world_size < self.local_batch:
            raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_set)} images)")
        self.sampler = ResumableSampler(train_set, info, seed=cfg.seed)
        loader_kw: dict[str, Any] = dict(num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                         collate_fn=self.task.collate)
        if cfg.workers > 0:
            loader_kw["persistent_workers"] = True
        self.train_loader = DataLoader(train_set, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                                       generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        self.val_loader = DataLoader(self.data.val, batch_size=self.local_batch,
                                     sampler=ShardSampler(len(self.data.val), info), **loader_kw)  # type: ignore[arg-type]

        self.model = self.task.build_model(cfg, self.data).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = cfg.epochs * self.steps_per_epoch
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))
        self.scaler = make_scaler(self.device, cfg.amp)
        self.net: nn.Module = self.model
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def describe(self) -> str:
        cfg = self.config
        return (f"training {cfg.model} ({count_params(self.model) / 1e6:.2f} M params) for "
                f"{self.task.name} on {self.data.source}: {len(self.data.train)} train / {len(self.data.val)} val "
                f"images, {cfg.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.batch_size}, lr {cfg.lr:g}, "
                f"{self.info.world_size} process(es) on {self.device}, {torch.get_num_threads()} threads -> "
                f"{self.run_dir}")

    def train_step(self, batch: Any) -> dict[str, float]:
        with self.autocast():
            loss, parts = self.task.loss(self.net, batch, self.device, self.config)
        self.last_loss = self.optimise(loss)
        return {"loss": self.last_loss, **parts, "count": 1.0}  # sums of per-step means, over steps

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        steps = max(totals.pop("count", 1.0), 1.0)
        return {f"train_{k}": v / steps for k, v in totals.items()}

    def validate(self) -> dict[str, float]:
        metrics = self.task.evaluate(self.net, self.val_loader, self.device, self.info, self.data, self.config.amp,
                                     progress=self.progress)
        return {f"val_{k}": v for k, v in metrics.items()}

    def epoch_message(self, row: dict[str, Any]) -> str:
        score = row.get(self.score_key, float("nan"))
        shown = f"  val {self.task.metric} {score:.4f}" if math.isfinite(score) else ""
        return (f"epoch {row['epoch']:3d}/{self.config.epochs}  train loss {row['train_loss']:.4f}{shown}  "
                f"lr {row['lr']:.3g}  {row['time']:.1f}s")

    def weights_metadata(self) -> dict[str, Any]:
        return {"task": self.task.name, "classes": self.data.classes, "train_config": self.config.to_dict(),
                **self.data.info}

    def metrics_fields(self) -> dict[str, Any]:
        return {"task": self.task.name, "model": self.config.model, "data": self.config.data,
                "data_source": self.data.source, "classes": self.data.classes, "metric": self.task.metric,
                "best_val": self.best if self.best > -math.inf else None}

    def plot(self) -> None:
        plot_curves(self.history, self.run_dir / "curves.png", title=f"{self.config.model} on {self.config.data}",
                    metric=self.score_key, metric_label=self.task.metric_label, scale=self.task.metric_scale)

    def finish(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        final = {k: v for k, v in last.items() if k.startswith("val_")}
        self.save_weights("last.safetensors", {"epoch": self.epoch, **final})
        value = final.get(self.score_key, float("nan"))
        self.log(f"final val {self.task.metric} {value:.4f}; best {self.best:.4f} at epoch {self.best_epoch}; "
                 f"run written to {self.run_dir}")
        return final
