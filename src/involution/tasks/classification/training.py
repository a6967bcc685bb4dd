"""``train``: one function from a :class:`TrainConfig` to a finished (or cleanly stopped) run directory.

Reliability: checkpoints are written atomically; ``resume=True`` restores model, optimizer, scheduler, scaler,
every RNG state, the sampler position and the epoch's running sums, so an interrupted-and-resumed run equals an
uninterrupted one exactly on the CPU; Ctrl-C (SIGINT) stops after the current step and saves; a non-finite loss
stops the run with a message and keeps the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models import count_flops, count_params, create_model, save_checkpoint
from ..distributed import (
    DistInfo,
    ResumableSampler,
    ShardSampler,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
    shutdown_distributed,
)
from ..plots import plot_curves
from ..run_dir import TensorBoard, new_run_dir, provenance, write_csv, write_json
from ..runtime import (
    NonFiniteLossError,
    StopFlag,
    autocast,
    convert_sync_bn,
    make_scaler,
    seed_everything,
    select_device,
)
from ..state import capture_rng, clean_state_dict, load_training_state, restore_rng, save_training_state, unwrap_model
from .config import TrainConfig, resolve
from .data import AugmentedDataset, DataSpec, build_transforms, load_splits, subsample_train
from .engine import evaluate, make_optimizer, make_scheduler, to_device

# Options a resumed run may change; anything else must match the checkpoint (exactness, and no silent mix-ups).
RESUME_MUTABLE = ("workers", "threads", "log_every", "eval_every", "device")


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted
    metrics: dict[str, Any]


def resume_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
    saved = TrainConfig.from_dict(json.loads(path.read_text()))
    values = saved.to_dict()
    changed = {k: v for k, v in (overrides or {}).items() if values.get(k) != v}
    if "epochs" in changed:
        values["epochs"] = changed.pop("epochs")  # longer runs re-plan the schedule from here on
    refused = {k: (values[k], v) for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        what = "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"cannot resume {run_dir} with different settings ({what}); start a new run with --out")
    values.update(changed)
    return TrainConfig.from_dict(values)


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


class _Run:
    def __init__(
        self,
        config: TrainConfig,
        out: str | os.PathLike | None,
        resume: bool,
        progress: bool,
        info: DistInfo,
        stop_flag: StopFlag | None,
        quiet: bool = False,
    ) -> None:
        self.info = info
        self.quiet = quiet
        self.config = resolve(config)
        self.resume = resume
        self.progress = progress and info.is_main
        if resume and out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run directory to continue")
        if out is None:
            out = all_gather_objects(str(new_run_dir()), info)[0]  # every rank writes nothing, but agrees on it
        self.run_dir = Path(out)
        if not resume and (self.run_dir / "checkpoints" / "last.pt").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop = stop_flag or StopFlag(announce=info.is_main and not quiet)
        self.device = select_device(self.config.device, info)

    # -- setup ----------------------------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.info.is_main and not self.quiet:
            print(message, flush=True)

    def _setup(self) -> None:
        cfg, info = self.config, self.info
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif info.enabled and self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") == "1":
            self._log("note: torchrun sets OMP_NUM_THREADS=1 (1 thread per process); pass --threads N to change it")
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

        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.sums = [0.0, 0.0, 0.0]  # loss * n, correct, n of the current epoch (this process)
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, -1
        self.elapsed = 0.0
        if self.resume:
            self._load()

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        m = unwrap_model(self.model)
        return {"model_name": m.model_name, "model_kwargs": json.loads(json.dumps(m.model_kwargs, default=list))}

    def _save(self) -> None:
        """Write ``last.pt`` (all ranks take part in gathering RNG states; rank 0 writes)."""
        rngs = all_gather_objects(capture_rng(), self.info)
        if not self.info.is_main:
            return
        state = {
            **self._identity(),
            "model": clean_state_dict(unwrap_model(self.model).state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "sums": list(self.sums),
            "history": self.history,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed,
            "config": self.config.to_json(),
            "data_spec": json.dumps(self.spec.to_dict()),
            "world_size": self.info.world_size,
        }
        save_training_state(self.ckpt_dir / "last.pt", state)

    def _save_weights(self, name: str, extra: dict[str, Any]) -> None:
        if self.info.is_main:
            meta = {"data_spec": self.spec.to_dict(), "train_config": self.config.to_dict(), **extra}
            save_checkpoint(unwrap_model(self.model), self.ckpt_dir / name, metadata=meta)

    def _load(self) -> None:
        path = self.ckpt_dir / "last.pt"
        state = load_training_state(path)
        mine = self._identity()
        if (state["model_name"], state["model_kwargs"]) != (mine["model_name"], mine["model_kwargs"]):
            raise ValueError(
                f"{path} holds {state['model_name']} {state['model_kwargs']}, but this run builds "
                f"{mine['model_name']} {mine['model_kwargs']}; resume with the run's own "
                "settings or start a new run with --out"
            )
        try:
            unwrap_model(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: the saved state does not fit this model/optimizer: {err}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            restore_rng(rngs[self.info.rank])
        else:
            warnings.warn(
                f"{path} was written by {len(rngs)} processes, this run has {self.info.world_size}: "
                "RNG streams are re-seeded, so the continuation is not bit-exact",
                stacklevel=2,
            )
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.sums = list(state["sums"]) if self.info.world_size == state.get("world_size", 1) else [0.0, 0.0, 0.0]
        self.history = list(state["history"])
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.elapsed = state["elapsed"]
        self._log(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    # -- outputs --------------------------------------------------------------------------------------------------

    def _write_metrics(self, status: str, final: dict[str, Any] | None = None) -> dict[str, Any]:
        metrics = {
            "status": status,
            "model": self.config.model,
            "data": self.config.data,
            "params": count_params(unwrap_model(self.model)),
            "macs": self.macs,  # forward multiply-adds per image
            "steps": self.global_step,
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "train_time_s": round(self.elapsed, 2),
            "history": self.history,
            **(final or {}),
        }
        if self.info.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
            if self.history:
                write_csv(self.run_dir / "metrics.csv", self.history)
                plot_curves(self.history, self.run_dir / "curves.png", title=f"{self.config.model} on {self.config.data}")
        return metrics

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._setup()
        cfg, info = self.config, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", cfg.to_dict())
            extra = {"device": str(self.device), "resumed_at_step": self.global_step if self.resume else None}
            name = "provenance.json" if not self.resume else f"provenance-resume-{self.global_step}.json"
            write_json(self.run_dir / name, provenance(cfg.seed, info.world_size, extra))
        self.tb = TensorBoard(self.run_dir / "tb" if info.is_main else None, purge_step=self.global_step or None)
        self._log(
            f"training {cfg.model} ({count_params(self.model) / 1e6:.2f} M params) on {cfg.data}: "
            f"{len(self.sampler.dataset)} train images, {cfg.epochs} epochs x {self.steps_per_epoch} steps, "
            f"batch {cfg.batch_size}, lr {cfg.lr:g}, {info.world_size} process(es) on {self.device}, "
            f"{torch.get_num_threads()} threads -> {self.run_dir}"
        )
        status = "finished"
        try:
            with self.stop:
                while self.epoch < cfg.epochs:
                    if not self._train_epoch():
                        status = "interrupted"
                        break
        except NonFiniteLossError:
            self._write_metrics("stopped: non-finite loss")
            raise
        finally:
            self.tb.close()
        if status == "interrupted":
            self._save()
            metrics = self._write_metrics(status)
            self._log(f"stopped at epoch {self.epoch + 1}, step {self.step_in_epoch}; saved {self.ckpt_dir / 'last.pt'}")
            self._log(f"continue with: involution train --resume --out {self.run_dir}")
            return TrainResult(self.run_dir, status, metrics)

        test = evaluate(self.net, self.test_loader, self.device, info, self.spec.num_classes, cfg.amp, cfg.channels_last)
        final = {"test_acc": test.acc, "test_top5": test.top5, "test_loss": test.loss, "test_count": test.count}
        self._save_weights("last.safetensors", {"epoch": self.epoch, **final})
        metrics = self._write_metrics(status, final)
        self._log(f"test accuracy {100 * test.acc:.2f}% (top-5 {100 * test.top5:.2f}%, {test.count} images); "
                  f"best val {100 * self.best_acc:.2f}% at epoch {self.best_epoch}; run written to {self.run_dir}")
        return TrainResult(self.run_dir, status, metrics)

    def _train_epoch(self) -> bool:
        """One epoch (or its remainder after a resume); False when a stop was requested."""
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.step_in_epoch * self.local_batch)
        self.net.train()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        stopped = False
        for batch in self.train_loader:
            images, labels = to_device(batch, self.device, cfg.channels_last)
            loss_value, correct = self._step(images, labels)
            self.sums[0] += loss_value * labels.numel()
            self.sums[1] += correct
            self.sums[2] += labels.numel()
            self.step_in_epoch += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.sums[0] / self.sums[2]:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
            if self.global_step % cfg.log_every == 0:
                self.tb.scalars({"train/loss_step": loss_value, "train/lr": self.scheduler.get_last_lr()[0]}, self.global_step)
            if self._agree(self.stop.requested):
                stopped = True
                break
        if bar is not None:
            bar.close()
        self.elapsed += time.perf_counter() - start
        if stopped and self.step_in_epoch < self.steps_per_epoch:
            return False
        self._end_epoch(time.perf_counter() - start)
        return not stopped

    def _agree(self, flag: bool) -> bool:
        """Whether any process wants to stop (every process must leave the loop at the same step)."""
        if not self.info.enabled:
            return flag
        return all_reduce_sum([float(flag)], self.info, self.device)[0] > 0

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        cfg = self.config
        with autocast(self.device, cfg.amp):
            logits = self.net(images)
            loss = self.criterion(logits.float(), labels)
        loss_value = loss.item()
        bad = not np.isfinite(loss_value)
        if self._agree(bad):
            raise NonFiniteLossError(
                f"the training loss is non-finite ({loss_value if bad else 'on another process'}) at epoch "
                f"{self.epoch + 1}, step "
                f"{self.step_in_epoch + 1}; stopped without saving this state (the last good checkpoint is "
                f"{self.ckpt_dir / 'last.pt'}). Try a lower --lr, --clip-grad 1.0, longer --warmup-epochs, "
                "or --amp bf16 instead of fp16"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        correct = (logits.detach().argmax(dim=1) == labels).sum().item()
        return loss_value, float(correct)

    def _end_epoch(self, seconds: float) -> None:
        cfg, info = self.config, self.info
        loss_sum, correct, count = all_reduce_sum(self.sums, info, self.device)
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "time": round(seconds, 3),
        }
        last_epoch = self.epoch + 1 == cfg.epochs
        if (self.epoch + 1) % cfg.eval_every == 0 or last_epoch:
            val = evaluate(self.net, self.val_loader, self.device, info, self.spec.num_classes, cfg.amp, cfg.channels_last)
            row.update(val_loss=val.loss, val_acc=val.acc, val_top5=val.top5)
        else:
            row.update(val_loss=float("nan"), val_acc=float("nan"), val_top5=float("nan"))
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = [0.0, 0.0, 0.0]
        improved = row["val_acc"] > self.best_acc  # NaN compares False
        if improved:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]
        self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, row["epoch"])
        self._save()
        if improved:
            self._save_weights("best.safetensors", {"epoch": row["epoch"], "val_acc": row["val_acc"]})
        self._write_metrics("running")
        self._log(
            f"epoch {row['epoch']:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  "
            f"train acc {100 * row['train_acc']:.2f}%  val acc {100 * row['val_acc']:.2f}%  "
            f"lr {row['lr']:.3g}  {row['time']:.1f}s"
        )
