"""``train_dense``: the training loop shared by detection and segmentation, from a config to a run directory.

The run directory is the classification one (``config.json``, ``provenance.json``, ``metrics.json`` with a
``history`` per epoch, ``metrics.csv``, ``curves.png``, TensorBoard events in ``tb/``, ``checkpoints/last.pt``,
``best.safetensors``, ``last.safetensors``). Reliability is the same too: atomic checkpoints; ``resume=True``
restores model, optimizer, schedule, loss scaler, every RNG state and the position inside the epoch (augmentation
is seeded per ``(seed, epoch, sample)``), so a resumed run continues exactly; Ctrl-C stops after the current step
and saves; a non-finite loss stops with advice and keeps the last good checkpoint. Under ``torchrun`` it runs
DistributedDataParallel; validation shards the set without padding and combines the metric over processes.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models import count_params, save_checkpoint
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
from ..runtime import NonFiniteLossError, StopFlag, autocast, lr_factor, make_scaler, seed_everything, select_device
from ..state import capture_rng, clean_state_dict, load_training_state, restore_rng, save_training_state, unwrap_model
from .config import DenseConfig, resolve
from .task import DenseData, DenseTask, KeyedDataset

# Options a resumed run may change; anything else must match the checkpoint.
RESUME_MUTABLE = ("workers", "threads", "log_every", "eval_every", "device")


@dataclass
class DenseResult:
    run_dir: Path
    status: str  # finished | interrupted
    metrics: dict[str, Any]


def resume_dense_config(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> DenseConfig:
    """The config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that break resumption."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
    values = DenseConfig.from_dict(json.loads(path.read_text())).to_dict()
    changed = {k: v for k, v in (overrides or {}).items() if values.get(k) != v}
    if "epochs" in changed:
        values["epochs"] = changed.pop("epochs")  # a longer run re-plans the schedule from here on
    refused = {k: (values[k], v) for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        what = "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"cannot resume {run_dir} with different settings ({what}); start a new run with --out")
    values.update(changed)
    return DenseConfig.from_dict(values)


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


class _DenseRun:
    def __init__(self, task: DenseTask, config: DenseConfig, out: str | os.PathLike | None, resume: bool,
                 progress: bool, info: DistInfo, stop_flag: StopFlag | None, quiet: bool) -> None:
        self.task, self.info, self.quiet, self.resume = task, info, quiet, resume
        self.config = resolve(config)
        if self.config.task != task.name:
            raise ValueError(f"config.task is {self.config.task!r} but the task given is {task.name!r}")
        self.progress = progress and info.is_main and not quiet
        if resume and out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run directory to continue")
        if out is None:
            out = all_gather_objects(str(new_run_dir(prefix=task.name)), info)[0]
        self.run_dir = Path(out)
        if not resume and (self.run_dir / "checkpoints" / "last.pt").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop = stop_flag or StopFlag(announce=info.is_main and not quiet)
        self.device = select_device(self.config.device, info)

    def _log(self, message: str) -> None:
        if self.info.is_main and not self.quiet:
            print(message, flush=True)

    # -- setup ----------------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, info = self.config, self.info
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed + info.rank)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} (global) must divide by the {info.world_size} processes")
        self.local_batch = cfg.batch_size // info.world_size
        self.data: DenseData = self.task.load_data(cfg, self._log)
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
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.sums: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.best, self.best_epoch = -math.inf, -1
        self.elapsed = 0.0
        if self.resume:
            self._load()

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        m = unwrap_model(self.model)
        return {"model_name": m.model_name, "model_kwargs": json.loads(json.dumps(m.model_kwargs, default=list))}

    def _save(self) -> None:
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
            "sums": dict(self.sums),
            "history": self.history,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "elapsed": self.elapsed,
            "config": self.config.to_json(),
            "world_size": self.info.world_size,
        }
        save_training_state(self.ckpt_dir / "last.pt", state)

    def _save_weights(self, name: str, extra: dict[str, Any]) -> None:
        if self.info.is_main:
            meta = {"task": self.task.name, "classes": self.data.classes, "train_config": self.config.to_dict(),
                    **self.data.info, **extra}
            save_checkpoint(unwrap_model(self.model), self.ckpt_dir / name, metadata=meta)

    def _load(self) -> None:
        path = self.ckpt_dir / "last.pt"
        state = load_training_state(path)
        mine = self._identity()
        if (state["model_name"], state["model_kwargs"]) != (mine["model_name"], mine["model_kwargs"]):
            raise ValueError(f"{path} holds {state['model_name']} {state['model_kwargs']}, but this run builds "
                             f"{mine['model_name']} {mine['model_kwargs']}; resume with the run's own settings")
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
            warnings.warn(f"{path} was written by {len(rngs)} processes, this run has {self.info.world_size}: "
                          "RNG streams are re-seeded, so the continuation is not bit-exact", stacklevel=2)
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        same_world = self.info.world_size == state.get("world_size", 1)
        self.sums = dict(state["sums"]) if same_world else {}
        self.history = list(state["history"])
        self.best, self.best_epoch, self.elapsed = state["best"], state["best_epoch"], state["elapsed"]
        self._log(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    # -- outputs --------------------------------------------------------------------------------------------------

    def _write_metrics(self, status: str, final: dict[str, Any] | None = None) -> dict[str, Any]:
        metrics = {
            "status": status,
            "task": self.task.name,
            "model": self.config.model,
            "data": self.config.data,
            "data_source": self.data.source,
            "classes": self.data.classes,
            "params": count_params(unwrap_model(self.model)),
            "steps": self.global_step,
            "metric": self.task.metric,
            "best_val": self.best if self.best > -math.inf else None,
            "best_epoch": self.best_epoch,
            "train_time_s": round(self.elapsed, 2),
            "history": self.history,
            **(final or {}),
        }
        if self.info.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
            if self.history:
                write_csv(self.run_dir / "metrics.csv", self.history)
                plot_curves(self.history, self.run_dir / "curves.png", title=f"{self.config.model} on {self.config.data}",
                            metric=f"val_{self.task.metric}", metric_label=self.task.metric_label,
                            scale=self.task.metric_scale)
        return metrics

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> DenseResult:
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
            f"training {cfg.model} ({count_params(self.model) / 1e6:.2f} M params) for {self.task.name} on "
            f"{self.data.source}: {len(self.data.train)} train / {len(self.data.val)} val images, {cfg.epochs} "
            f"epochs x {self.steps_per_epoch} steps, batch {cfg.batch_size}, lr {cfg.lr:g}, "
            f"{info.world_size} process(es) on {self.device}, {torch.get_num_threads()} threads -> {self.run_dir}"
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
            self._log(f"continue with: involution {self.task.name} train --resume --out {self.run_dir}")
            return DenseResult(self.run_dir, status, metrics)
        last = self.history[-1] if self.history else {}
        final = {k: v for k, v in last.items() if k.startswith("val_")}
        self._save_weights("last.safetensors", {"epoch": self.epoch, **final})
        metrics = self._write_metrics(status, final)
        value = final.get(f"val_{self.task.metric}", float("nan"))
        self._log(f"final val {self.task.metric} {value:.4f}; best {self.best:.4f} at epoch {self.best_epoch}; "
                  f"run written to {self.run_dir}")
        return DenseResult(self.run_dir, status, metrics)

    def _train_epoch(self) -> bool:
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
            parts = self._step(batch)
            for key, value in parts.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
            self.sums["steps"] = self.sums.get("steps", 0.0) + 1
            self.step_in_epoch += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.sums['loss'] / self.sums['steps']:.4f}",
                                lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
            if self.global_step % cfg.log_every == 0:
                self.tb.scalars({f"train/{k}_step": v for k, v in parts.items()}
                                | {"train/lr": self.scheduler.get_last_lr()[0]}, self.global_step)
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
        if not self.info.enabled:
            return flag
        return all_reduce_sum([float(flag)], self.info, self.device)[0] > 0

    def _step(self, batch: Any) -> dict[str, float]:
        cfg = self.config
        with autocast(self.device, cfg.amp):
            loss, parts = self.task.loss(self.net, batch, self.device, cfg)
        value = float(loss.item())
        bad = not math.isfinite(value)
        if self._agree(bad):
            raise NonFiniteLossError(
                f"the training loss is non-finite ({value if bad else 'on another process'}) at epoch "
                f"{self.epoch + 1}, step {self.step_in_epoch + 1}; stopped without saving this state (the last "
                f"good checkpoint is {self.ckpt_dir / 'last.pt'}). Try a lower --lr, --clip-grad 10, or a longer "
                "--warmup-epochs"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": value, **parts}

    def _end_epoch(self, seconds: float) -> None:
        cfg, info = self.config, self.info
        keys = sorted(self.sums)
        totals = dict(zip(keys, all_reduce_sum([self.sums[k] for k in keys], info, self.device)))
        steps = max(totals.pop("steps", 1.0), 1.0)
        row: dict[str, Any] = {"epoch": self.epoch + 1}
        row.update({f"train_{k}": v / steps for k, v in totals.items()})
        row.update(lr=self.scheduler.get_last_lr()[0], time=round(seconds, 3))
        if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
            start = time.perf_counter()
            metrics = self.task.evaluate(self.net, self.val_loader, self.device, info, self.data, cfg.amp,
                                         progress=self.progress)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            row["eval_time"] = round(time.perf_counter() - start, 3)
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = {}
        score = row.get(f"val_{self.task.metric}", float("nan"))
        improved = score > self.best  # NaN compares False
        if improved:
            self.best, self.best_epoch = score, row["epoch"]
        self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch"}, row["epoch"])
        self._save()
        if improved:
            self._save_weights("best.safetensors", {"epoch": row["epoch"], f"val_{self.task.metric}": score})
        self._write_metrics("running")
        shown = f"  val {self.task.metric} {score:.4f}" if math.isfinite(score) else ""
        self._log(f"epoch {row['epoch']:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}{shown}  "
                  f"lr {row['lr']:.3g}  {row['time']:.1f}s")
