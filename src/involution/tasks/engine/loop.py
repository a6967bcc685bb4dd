"""The resumable training loop every task shares: run directory, checkpoints, resume, Ctrl-C, torchrun agreement,
per-epoch history, best weights. One :class:`TrainingLoop` runs any :class:`~.task.Task` (classification,
detection, segmentation), which supplies its data, model, loss and evaluation; :func:`train` is the entry point.

Reliability: ``last.pt`` is written atomically at the end of every epoch (after ``best.safetensors``, so it never
records a best that is not on disk) and on a stop; resuming restores model, optimizer, schedule, loss scaler, every
RNG state, the position inside the epoch and the epoch's running sums, so an interrupted-and-resumed run equals an
uninterrupted one exactly on the CPU, and makes the best weights agree with last.pt's record after a crash between
the two writes (:mod:`.checkpoints`). The first Ctrl-C or SIGTERM stops after the current step and saves; a
non-finite loss stops the run with advice, keeping the last good checkpoint; resuming with another model, or from a
damaged file, or to fewer epochs than were begun, is refused with a message (more epochs re-plan the schedule, said
in one line). One process owns a run directory: a second run on it (fresh or ``--resume``) is refused while the
first lives (:func:`~.run_dir.lock_run_dir`), and a fresh run refuses to write over an earlier run's files unless
``overwrite`` (:func:`~.run_dir.earlier_run`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...models import count_params
from .checkpoints import RunCheckpoints, RunProgress, TrainedParts
from .context import ConfigT, RunContext, RunRecord, TaskData, dataset_size
from .distributed import DistInfo, ResumableSampler, ShardSampler, all_gather_objects, all_reduce_sum
from .distributed import init_distributed, shutdown_distributed
from .plots import plot_curves
from .run_config import RunPlan
from .run_dir import TensorBoard, describe_outputs, earlier_run, new_run_dir, own_run_dir, provenance
from .run_dir import remove_outputs, remove_stale_temp_files, write_csv, write_json
from .runtime import NonFiniteLossError, StopFlag, TrainResult, autocast, compile_module, detach_worker
from .runtime import make_optimizer, make_scaler, make_scheduler, seed_everything, select_device
from .state import unwrap_model
from .task import Task


def train(
    task: Task[ConfigT],
    config: ConfigT,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_flag: StopFlag | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``task``'s model as ``config`` (a ``task.config_class``; ``None`` fields: the task's recipe) says, in
    ``out`` (default a new ``runs/<task.run_prefix>-<time>``; with ``resume``, the run to continue from its
    ``checkpoints/last.pt``); returns the run directory, its status and final metrics. ``progress``: tqdm bars
    (rank 0 only); ``quiet``: print nothing; ``overwrite``: a fresh run replaces the files of an earlier run in
    ``out`` (without it, it refuses to start there)."""
    info = init_distributed("cuda" if select_device(config.device, DistInfo()).type == "cuda" else "cpu")
    try:
        return TrainingLoop(task, config, out, resume, progress, info, stop_flag, quiet, overwrite).run()
    finally:
        shutdown_distributed()


class TrainingLoop(Generic[ConfigT]):
    """One training run of ``task``. After :meth:`setup` it holds ``data``, ``parts`` (the plain model, its
    optimizer, per-step schedule and loss scaler), ``context`` (what the task's hooks get: the model's
    :class:`~.context.ModelSetup`, ``net``, the model or its DDP / compiled wrapper, that is called...),
    ``checkpoints`` (:class:`~.checkpoints.RunCheckpoints`), ``sampler`` (a
    :class:`~.distributed.ResumableSampler`), the loaders, ``steps_per_epoch`` and ``local_batch``; ``progress``
    is where the run stands (:class:`~.checkpoints.RunProgress`).
    """

    last_loss = float("nan")  # the latest step's loss (train_step sets it), for TensorBoard

    def __init__(self, task: Task[ConfigT], config: ConfigT, out: str | os.PathLike | None, resume: bool,
                 progress: bool, info: DistInfo, stop_flag: StopFlag | None, quiet: bool,
                 overwrite: bool = False) -> None:
        config = task.resolve(config)
        self.task, self.config, self.info, self.quiet, self.resume = task, config, info, quiet, resume
        self.plan = RunPlan.of(config)
        self.overwrite = overwrite
        self.replaced: list[Path] = []  # an earlier run's files that this one replaces (overwrite)
        if resume and overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        self.score_key = task.score_key  # the history entry (higher is better) that picks best.safetensors
        self.show_progress = progress and info.is_main and not quiet
        if resume and out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run directory to continue")
        if out is None:
            out = str(all_gather_objects(str(new_run_dir(prefix=task.run_prefix)), info)[0])  # every rank agrees
        self.run_dir = Path(out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop = stop_flag or StopFlag(announce=info.is_main and not quiet)
        self.device = select_device(config.device, info)
        self.progress = RunProgress()

    # -- the task's pieces --------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Seed, load the data, build the sampler and loaders, then the model (:meth:`build_model`)."""
        cfg, info, task, plan = self.config, self.info, self.task, self.plan
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        elif info.enabled and self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS") == "1":
            self.log("note: torchrun sets OMP_NUM_THREADS=1 (1 thread per process); pass --threads N to change it")
        seed_everything(cfg.seed + info.rank)
        if plan.batch_size % info.world_size:
            raise ValueError(f"--batch-size {plan.batch_size} (global) must divide by the {info.world_size} processes")
        self.local_batch = plan.batch_size // info.world_size
        self.data: TaskData = task.load_data(cfg, self.log)
        train_set = task.train_set(cfg, self.data)
        size = dataset_size(train_set)
        if size // info.world_size < self.local_batch:
            raise ValueError(f"--batch-size {plan.batch_size} is larger than the training set ({size} images)")
        self.sampler = ResumableSampler(train_set, info, seed=cfg.seed)
        loader_kw: dict[str, Any] = dict(num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                         collate_fn=task.collate)
        if cfg.workers > 0:
            loader_kw.update(persistent_workers=True, worker_init_fn=detach_worker)
        # a private generator: DataLoader draws a base seed per iterator, which must not consume the global RNG
        self.train_loader = DataLoader(train_set, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                                       generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        self.steps_per_epoch = len(self.sampler) // self.local_batch

        def eval_loader(split: Dataset) -> DataLoader:
            data = task.eval_set(cfg, self.data, split)
            sampler = ShardSampler(dataset_size(data), info)
            return DataLoader(data, batch_size=self.local_batch, sampler=sampler, **loader_kw)

        self.val_loader = eval_loader(self.data.val)
        test = self.data.test
        test_loader = self.val_loader if test is None or test is self.data.val else eval_loader(test)
        self.build_model(size, test_loader)

    def build_model(self, train_size: int, test_loader: DataLoader) -> None:
        """The model on the device, its optimizer, schedule and loss scaler, its DDP / compiled wrapper, the
        checkpoints that save them, and the context the task's hooks get."""
        cfg, info, task = self.config, self.info, self.task
        built = task.build_model(cfg, self.data)
        setup = task.prepare_model(replace(built, model=built.model.to(self.device)), cfg, self.device, info)
        model = setup.model
        optimizer = make_optimizer(model, self.plan, setup.optimizer, setup.nesterov)
        scheduler = make_scheduler(optimizer, self.plan, self.steps_per_epoch)
        self.parts = TrainedParts(model, optimizer, scheduler, make_scaler(self.device, cfg.amp))
        net: nn.Module = model
        if info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if setup.compile_backend is not None:  # --compile
            net = compile_module(net, setup.compile_backend)
        self.checkpoints = RunCheckpoints(self.ckpt_dir, self.parts, cfg, info, self.score_key,
                                          task.weights_metadata(cfg, self.data), task.extra_state(self.data), self.log)
        self.context = RunContext(cfg, self.data, setup, net, self.device, info, train_size, test_loader,
                                  self.show_progress)

    def record(self) -> RunRecord:
        """The run's outcome so far, for the task's reporting hooks."""
        p = self.progress
        return RunRecord(tuple(p.history), p.best, p.best_epoch, self.run_dir)

    def describe(self) -> str:
        """The line printed when training starts."""
        cfg, plan = self.config, self.plan
        return (f"training {cfg.model} ({count_params(self.parts.model) / 1e6:.2f} M params) "
                f"{self.task.describe_data(self.context)}, {plan.epochs} epochs x {self.steps_per_epoch} steps, "
                f"batch {plan.batch_size}, lr {plan.lr:g}, {self.info.world_size} process(es) on {self.device}, "
                f"{torch.get_num_threads()} threads -> {self.run_dir}")

    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, loss and :meth:`optimise` for one batch; returns the amounts to add to the epoch's sums."""
        with self.autocast():
            loss, sums, weight = self.task.loss(self.context.net, batch, self.context)
        self.last_loss = self.optimise(loss)
        return {"loss": self.last_loss * weight, **sums, "count": weight}

    def validate(self) -> dict[str, float]:
        """The ``val_*`` history entries (every process takes part; the result is the same on all)."""
        metrics = self.task.evaluate(self.context.net, self.val_loader, self.context.evaluation())
        return {f"val_{k}": v for k, v in metrics.items()}

    def epoch_message(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']:3d}/{self.plan.epochs}  train loss {row['train_loss']:.4f}"
                f"{self.task.epoch_scores(row)}  lr {row['lr']:.3g}  {row['time']:.1f}s")

    def finish(self) -> dict[str, Any]:
        """After the last epoch: the final metrics, the last weights written, the summary logged."""
        record = self.record()
        final = self.task.final_metrics(self.context, record)
        self.checkpoints.save_weights("last.safetensors", {"epoch": self.progress.epoch, **final})
        self.log(self.task.final_message(self.context, record, final))
        return final

    def plot(self) -> None:
        """Pictures of the history (curves.png)."""
        plot_curves(self.progress.history, self.run_dir / "curves.png",
                    title=f"{self.config.model} on {self.config.data}", metric=self.score_key,
                    metric_label=self.task.metric_label, scale=self.task.metric_scale)

    def log(self, message: str) -> None:
        if self.info.is_main and not self.quiet:
            print(message, flush=True)

    # -- the step -----------------------------------------------------------------------------------------------

    def agree(self, flag: bool) -> bool:
        """Whether any process raised ``flag`` (every process must leave the loop at the same step)."""
        if not self.info.enabled:
            return flag
        return all_reduce_sum([float(flag)], self.info, self.device)[0] > 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.config.amp)

    def optimise(self, loss: torch.Tensor) -> float:
        """Check ``loss`` is finite on every process, then backward (scaled), clip, step, schedule; returns it."""
        value = float(loss.item())
        bad = not math.isfinite(value)
        if self.agree(bad):
            last = self.ckpt_dir / "last.pt"
            kept = (f"the last good checkpoint is {last}" if last.is_file()
                    else "no checkpoint was written yet, so there is nothing to resume")
            raise NonFiniteLossError(
                f"the training loss is non-finite ({value if bad else 'on another process'}) at epoch "
                f"{self.progress.epoch + 1}, step {self.progress.step_in_epoch + 1}; stopped without saving this "
                f"state ({kept}). Try a lower --lr, --clip-grad, longer --warmup-epochs, or --amp bf16 instead of fp16"
            )
        parts = self.parts
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if self.config.clip_grad:
            parts.scaler.unscale_(parts.optimizer)
            nn.utils.clip_grad_norm_(parts.model.parameters(), self.config.clip_grad)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        return value

    # -- outputs --------------------------------------------------------------------------------------------------

    def write_metrics(self, status: str, final: dict[str, Any] | None = None) -> dict[str, Any]:
        p = self.progress
        metrics = {
            "status": status,
            **self.task.metrics_fields(self.context, self.record()),
            "params": count_params(unwrap_model(self.parts.model)),
            "steps": p.global_step,
            "best_epoch": p.best_epoch,
            "train_time_s": round(p.elapsed, 2),
            "history": p.history,
            **(final or {}),
        }
        if self.info.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
            if p.history:
                write_csv(self.run_dir / "metrics.csv", p.history)
                self.plot()
        return metrics

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Own the run directory (one process trains in it at a time), then train (:meth:`run_owned`)."""
        lock = own_run_dir(self.run_dir, self.info)
        try:
            # a fresh run: refused before anything is written if an earlier run's files are there (without overwrite)
            self.replaced = [] if self.resume else earlier_run(self.run_dir, self.info, self.overwrite)
            if self.info.is_main:
                stale = remove_stale_temp_files(self.run_dir)
                if stale:
                    self.log(f"removed {len(stale)} temporary file(s) that killed writers left in {self.run_dir}")
            return self.run_owned()
        finally:
            if lock is not None:
                lock.release()

    def run_owned(self) -> TrainResult:
        """Set up, resume if asked, run the epochs, and finish (the run directory is this process's)."""
        self.setup()
        p = self.progress
        if self.resume:
            self.checkpoints.load_state(p)
            self.log(f"resumed {self.run_dir} at epoch {p.epoch + 1}, step {p.step_in_epoch}/{self.steps_per_epoch}")
        cfg, info = self.config, self.info
        if info.is_main:
            if self.replaced:  # only now, once the data and the model are ready: a run failing earlier keeps them
                self.log(f"--overwrite: replacing {describe_outputs(self.run_dir, self.replaced)} in {self.run_dir}")
                remove_outputs(self.replaced)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", cfg.to_dict())
            extra = {"device": str(self.device), "resumed_at_step": p.global_step if self.resume else None}
            name = "provenance.json" if not self.resume else f"provenance-resume-{p.global_step}.json"
            write_json(self.run_dir / name, provenance(cfg.seed, info.world_size, extra))
        self.tb = TensorBoard(self.run_dir / "tb" if info.is_main else None, purge_step=p.global_step or None)
        self.log(self.describe())
        status = "finished"
        try:
            with self.stop:
                while p.epoch < self.plan.epochs:
                    if not self._train_epoch():
                        status = "interrupted"
                        break
        except NonFiniteLossError:
            self.write_metrics("stopped: non-finite loss")
            raise
        finally:
            self.tb.close()
        if status == "interrupted":
            self.checkpoints.save_state(p)
            metrics = self.write_metrics(status)
            self.log(f"stopped at epoch {p.epoch + 1}, step {p.step_in_epoch}; saved {self.ckpt_dir / 'last.pt'}")
            self.log(f"continue with: involution {self.task.command} --resume --out {self.run_dir}")
            return TrainResult(self.run_dir, status, metrics, self.stop.signum)
        final = self.finish()
        return TrainResult(self.run_dir, status, self.write_metrics(status, final))

    def _train_epoch(self) -> bool:
        """One epoch (or its remainder after a resume); False when a stop was requested."""
        cfg, p = self.config, self.progress
        self.sampler.set_epoch(p.epoch)
        self.sampler.set_start(p.step_in_epoch * self.local_batch)
        self.context.net.train()
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=p.step_in_epoch,
                       desc=f"epoch {p.epoch + 1}/{self.plan.epochs}", leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        stopped = False
        for batch in self.train_loader:
            amounts = self.train_step(batch)
            for key, value in amounts.items():
                p.sums[key] = p.sums.get(key, 0.0) + value
            p.step_in_epoch += 1
            p.global_step += 1
            lr = float(self.parts.scheduler.get_last_lr()[0])  # LambdaLR's lrs are floats
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{p.sums['loss'] / max(p.sums['count'], 1.0):.4f}", lr=f"{lr:.3g}")
            if p.global_step % cfg.log_every == 0:
                self.tb.scalars({"train/loss_step": self.last_loss, "train/lr": lr}, p.global_step)
            if self.agree(self.stop.requested):
                stopped = True
                break
        if bar is not None:
            bar.close()
        p.elapsed += time.perf_counter() - start
        if stopped and p.step_in_epoch < self.steps_per_epoch:
            return False
        self._end_epoch(time.perf_counter() - start)
        return not stopped

    def _end_epoch(self, seconds: float) -> None:
        cfg, info, p = self.config, self.info, self.progress
        keys = sorted(p.sums)
        totals = dict(zip(keys, all_reduce_sum([p.sums[k] for k in keys], info, self.device)))
        row: dict[str, Any] = {"epoch": p.epoch + 1, **self.task.epoch_row(totals)}
        row.update(lr=self.parts.scheduler.get_last_lr()[0], time=round(seconds, 3))
        due = (p.epoch + 1) % cfg.eval_every == 0 or p.epoch + 1 == self.plan.epochs
        row.update(self.validate() if due else self.task.no_validation())
        p.history.append(row)
        p.epoch += 1
        p.step_in_epoch = 0
        p.sums = {}
        score = row.get(self.score_key, float("nan"))
        improved = score > p.best  # NaN compares False
        if improved:
            p.best, p.best_epoch = score, row["epoch"]
        self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
                        row["epoch"])
        if improved:  # the weights first: last.pt never records a best that is not on disk
            self.checkpoints.save_weights("best.safetensors", {"epoch": row["epoch"], self.score_key: score})
        self.checkpoints.save_state(p)
        self.write_metrics("running")
        self.log(self.epoch_message(row))
