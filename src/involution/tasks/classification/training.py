"""``train``: one function from a :class:`TrainConfig` to a finished (or cleanly stopped) run directory.

The loop itself (checkpoints, exact resume, Ctrl-C, non-finite losses, torchrun agreement) is the shared
:class:`~involution.tasks.engine.loop.TrainingLoop`; this module supplies the classification data, model, step and
evaluation, and the test split scored once at the end.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models import count_flops, count_params, create_model
from ..engine.distributed import DistInfo, ResumableSampler, ShardSampler, init_distributed, shutdown_distributed
from ..engine.loop import RESUME_MUTABLE, TrainingLoop, TrainResult, resume_values, saved_config
from ..engine.plots import plot_curves
from ..engine.runtime import NonFiniteLossError, StopFlag, convert_sync_bn, make_scaler, seed_everything, select_device
from .config import TrainConfig, resolve
from .data import AugmentedDataset, DataSpec, build_transforms, load_splits, subsample_train
from .engine import evaluate, make_optimizer, make_scheduler, to_device

__all__ = ["RESUME_MUTABLE", "NonFiniteLossError", "TrainResult", "resume_config", "train"]


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    saved = TrainConfig.from_dict(saved_config(run_dir)).to_dict()
    return TrainConfig.from_dict(resume_values(run_dir, saved, overrides))


def _macs_per_image(cfg: TrainConfig, spec: DataSpec) -> int | None:
    """Forward multiply-adds per image, counted on a meta-device copy (the trained model is never run for it)."""
    try:
        return count_flops(cfg.model, (1, spec.in_chans, cfg.image_size, cfg.image_size),
                           num_classes=spec.num_classes, in_chans=spec.in_chans, **cfg.model_kwargs).macs
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return None


def train(
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_flag: StopFlag | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Train a classifier; returns where the run was written and its final metrics.

    Args:
        config: what to train (None: the default, RedNet on digits). Fields left ``None`` come from the recipe.
        out: the run directory (default: a new ``runs/train-<time>``); with ``resume`` the one to continue.
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.
        progress: show tqdm progress bars (rank 0 only).
        quiet: print nothing (studies run many short runs under their own progress bar).
    """
    config = config or TrainConfig()
    info = init_distributed("cuda" if select_device(config.device, DistInfo()).type == "cuda" else "cpu")
    try:
        return _Run(config, out, resume, progress, info, stop_flag, quiet).run()
    finally:
        shutdown_distributed()


class _Run(TrainingLoop):
    """A classification run: digits / Fashion-MNIST / CIFAR-10 / image folders, cross-entropy, top-1/top-5."""

    def __init__(self, config: TrainConfig, out: str | os.PathLike | None, resume: bool, progress: bool,
                 info: DistInfo, stop_flag: StopFlag | None, quiet: bool = False) -> None:
        super().__init__(resolve(config), out, resume, progress, info, stop_flag, quiet)

    def setup(self) -> None:
        cfg, info = self.config, self.info
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif info.enabled and self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") == "1":
            self.log("note: torchrun sets OMP_NUM_THREADS=1 (1 thread per process); pass --threads N to change it")
        seed_everything(cfg.seed + info.rank)

        splits = subsample_train(load_splits(cfg.data, cfg.data_dir, cfg.image_size, cfg.val_fraction),
                                 cfg.train_fraction, cfg.seed)
        self.spec: DataSpec = splits.spec
        train_tf, eval_tf = build_transforms(self.spec, cfg.augment)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} (global) must divide by the {info.world_size} processes")
        self.local_batch = cfg.batch_size // info.world_size
        train_set = AugmentedDataset(splits.train, train_tf, seed=cfg.seed)
        if len(train_set) // info.world_size < self.local_batch:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_set)} images)"
            )
        self.sampler = ResumableSampler(train_set, info, seed=cfg.seed)
        loader_kw: dict[str, Any] = dict(num_workers=cfg.workers, pin_memory=self.device.type == "cuda")
        if cfg.workers > 0:
            loader_kw["persistent_workers"] = True
        # a private generator: DataLoader draws a base seed per iterator, which must not consume the global RNG
        self.train_loader = DataLoader(
            train_set, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed), **loader_kw,
        )
        self.steps_per_epoch = len(self.sampler) // self.local_batch

        def eval_loader(dataset: Any) -> DataLoader:
            data = AugmentedDataset(dataset, eval_tf)
            return DataLoader(data, batch_size=self.local_batch, sampler=ShardSampler(len(data), info), **loader_kw)

        self.val_loader = eval_loader(splits.val)
        self.test_loader = self.val_loader if splits.test is splits.val else eval_loader(splits.test)

        model = create_model(
            cfg.model, num_classes=self.spec.num_classes, in_chans=self.spec.in_chans, checkpoint=cfg.checkpoint,
            **cfg.model_kwargs,
        )
        self.model = model.to(self.device)
        self.macs = _macs_per_image(cfg, self.spec)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and info.enabled:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs GPUs: SyncBatchNorm does not run on CPU tensors (drop --sync-bn)")
            self.model = convert_sync_bn(self.model)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = make_scaler(self.device, cfg.amp)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.net: nn.Module = self.model
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net, backend=cfg.compile_backend)

    def describe(self) -> str:
        cfg = self.config
        return (f"training {cfg.model} ({count_params(self.model) / 1e6:.2f} M params) on {cfg.data}: "
                f"{len(self.sampler.dataset)} train images, {cfg.epochs} epochs x {self.steps_per_epoch} steps, "
                f"batch {cfg.batch_size}, lr {cfg.lr:g}, {self.info.world_size} process(es) on {self.device}, "
                f"{torch.get_num_threads()} threads -> {self.run_dir}")

    def train_step(self, batch: Any) -> dict[str, float]:
        images, labels = to_device(batch, self.device, self.config.channels_last)
        with self.autocast():
            logits = self.net(images)
            loss = self.criterion(logits.float(), labels)
        self.last_loss = self.optimise(loss)
        correct = (logits.detach().argmax(dim=1) == labels).sum().item()
        n = labels.numel()
        return {"loss": self.last_loss * n, "correct": float(correct), "count": float(n)}

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        count = max(totals.get("count", 0.0), 1.0)
        return {"train_loss": totals.get("loss", 0.0) / count, "train_acc": totals.get("correct", 0.0) / count}

    def _evaluate(self, loader: DataLoader) -> Any:
        cfg = self.config
        return evaluate(self.net, loader, self.device, self.info, self.spec.num_classes, cfg.amp, cfg.channels_last)

    def validate(self) -> dict[str, float]:
        val = self._evaluate(self.val_loader)
        return {"val_loss": val.loss, "val_acc": val.acc, "val_top5": val.top5}

    def no_validation(self) -> dict[str, float]:
        return {"val_loss": float("nan"), "val_acc": float("nan"), "val_top5": float("nan")}

    def epoch_message(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']:3d}/{self.config.epochs}  train loss {row['train_loss']:.4f}  "
                f"train acc {100 * row['train_acc']:.2f}%  val acc {100 * row['val_acc']:.2f}%  "
                f"lr {row['lr']:.3g}  {row['time']:.1f}s")

    def extra_state(self) -> dict[str, Any]:
        return {"data_spec": json.dumps(self.spec.to_dict())}

    def weights_metadata(self) -> dict[str, Any]:
        return {"data_spec": self.spec.to_dict(), "train_config": self.config.to_dict()}

    def metrics_fields(self) -> dict[str, Any]:
        return {"model": self.config.model, "data": self.config.data,
                "macs": self.macs,  # forward multiply-adds per image
                "best_val_acc": self.best if self.best > -1.0 else -1.0}

    def plot(self) -> None:
        plot_curves(self.history, self.run_dir / "curves.png", title=f"{self.config.model} on {self.config.data}")

    def finish(self) -> dict[str, Any]:
        test = self._evaluate(self.test_loader)
        final = {"test_acc": test.acc, "test_top5": test.top5, "test_loss": test.loss, "test_count": test.count}
        self.save_weights("last.safetensors", {"epoch": self.epoch, **final})
        self.log(f"test accuracy {100 * test.acc:.2f}% (top-5 {100 * test.top5:.2f}%, {test.count} images); "
                 f"best val {100 * self.best:.2f}% at epoch {self.best_epoch}; run written to {self.run_dir}")
        return final
