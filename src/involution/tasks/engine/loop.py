"""The resumable training loop every task shares: run directory, checkpoints, resume, Ctrl-C, torchrun agreement,
per-epoch history, best weights. A task subclasses :class:`TrainingLoop` and supplies its data, model, step and
validation (classification: :mod:`.classification.training`; detection and segmentation: :mod:`.dense.training`).

Reliability: ``last.pt`` is written atomically at the end of every epoch (after ``best.safetensors``, so it never
records a best that is not on disk) and on a stop; resuming restores model, optimizer, schedule, loss scaler, every
RNG state, the position inside the epoch and the epoch's running sums, so an interrupted-and-resumed run equals an
uninterrupted one exactly on the CPU, and makes the best weights agree with last.pt's record after a crash between
the two writes. The first Ctrl-C stops after the current step and saves; a non-finite loss stops the run with
advice, keeping the last good checkpoint; resuming with another model, or from a damaged file, is refused with a
message. One process owns a run directory: a second run on it (fresh or ``--resume``) is refused while
the first lives (:func:`~.run_dir.lock_run_dir`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...models import count_params, save_checkpoint
from ...models._safetensors import read_safetensors
from .distributed import DistInfo, all_gather_objects, all_reduce_sum
from .run_dir import (
    RunDirBusy,
    RunDirLock,
    TensorBoard,
    lock_run_dir,
    new_run_dir,
    provenance,
    remove_stale_temp_files,
    write_csv,
    write_json,
)
from .runtime import NonFiniteLossError, StopFlag, autocast, select_device
from .state import capture_rng, clean_state_dict, load_training_state, restore_rng, save_training_state, unwrap_model

# Options a resumed run may change; anything else must match the checkpoint (exactness, and no silent mix-ups).
RESUME_MUTABLE = ("workers", "threads", "log_every", "eval_every", "device")


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | interrupted
    metrics: dict[str, Any]


def resume_values(run_dir: str | os.PathLike, saved: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The saved config values of ``run_dir`` with ``overrides`` applied; refuses changes that break resumption
    (``epochs`` may grow or shrink: the schedule is re-planned from there on)."""
    values = dict(saved)
    changed = {k: v for k, v in (overrides or {}).items() if values.get(k) != v}
    if "epochs" in changed:
        values["epochs"] = changed.pop("epochs")
    refused = {k: (values.get(k), v) for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        what = "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"cannot resume {run_dir} with different settings ({what}); start a new run with --out")
    values.update(changed)
    return values


def saved_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot resume: {path} is not a JSON file ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"cannot resume: {path} does not hold a run's configuration (a JSON object)")  # noqa: TRY004
    return values


class TrainingLoop(ABC):
    """One training run. Subclasses build everything in :meth:`setup` and implement the abstract hooks.

    After :meth:`setup` the loop expects ``model`` (the plain module), ``net`` (what is called: the model, or its
    DDP / compiled wrapper), ``optimizer``, ``scheduler`` (stepped once per step), ``scaler``, ``sampler`` (a
    :class:`~involution.tasks.engine.distributed.ResumableSampler`), ``train_loader``, ``steps_per_epoch`` and
    ``local_batch``.
    """

    command = "train"  # what resumes a run: ``involution {command} --resume --out RUN``
    run_prefix = "train"
    score_key = "val_acc"  # the history entry (higher is better) that picks best.safetensors
    last_loss = float("nan")  # the latest step's loss (train_step sets it), for TensorBoard

    def __init__(self, config: Any, out: str | os.PathLike | None, resume: bool, progress: bool, info: DistInfo,
                 stop_flag: StopFlag | None, quiet: bool) -> None:
        self.config, self.info, self.quiet, self.resume = config, info, quiet, resume
        self.progress = progress and info.is_main and not quiet
        if resume and out is None:
            raise ValueError("--resume needs --out RUN_DIR: the run directory to continue")
        if out is None:
            out = all_gather_objects(str(new_run_dir(prefix=self.run_prefix)), info)[0]  # every rank agrees on it
        self.run_dir = Path(out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop = stop_flag or StopFlag(announce=info.is_main and not quiet)
        self.device = select_device(config.device, info)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.sums: dict[str, float] = {}  # this epoch's running sums on this process (what train_step returns)
        self.history: list[dict[str, Any]] = []
        self.best, self.best_epoch = -math.inf, -1
        self.elapsed = 0.0

    # -- hooks --------------------------------------------------------------------------------------------------

    @abstractmethod
    def setup(self) -> None:
        """Seed, load the data, build model / optimizer / schedule / scaler / sampler / loaders."""

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """Forward, loss and :meth:`optimise` for one batch; returns the amounts to add to the epoch's sums."""

    @abstractmethod
    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        """The epoch's ``train_*`` history entries from its sums (reduced over processes)."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """The ``val_*`` history entries (every process takes part; the result is the same on all)."""

    @abstractmethod
    def finish(self) -> dict[str, Any]:
        """After the last epoch: final metrics (e.g. the test split), last weights written; logs its summary."""

    @abstractmethod
    def describe(self) -> str:
        """The line printed when training starts."""

    def running_loss(self) -> float:
        return self.sums.get("loss", 0.0) / max(self.sums.get("count", 0.0), 1.0)

    def no_validation(self) -> dict[str, float]:
        """The ``val_*`` entries of an epoch that is not validated (``--eval-every``)."""
        return {}

    def epoch_message(self, row: dict[str, Any]) -> str:
        return f"epoch {row['epoch']:3d}/{self.config.epochs}  train loss {row['train_loss']:.4f}"

    def extra_state(self) -> dict[str, Any]:
        """More entries for ``last.pt``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def weights_metadata(self) -> dict[str, Any]:
        """Metadata stored beside the weights in best/last.safetensors."""
        return {}

    def metrics_fields(self) -> dict[str, Any]:
        """Task fields of metrics.json (before the common ones)."""
        return {}

    def plot(self) -> None:
        """Pictures of the history (curves.png)."""

    def log(self, message: str) -> None:
        if self.info.is_main and not self.quiet:
            print(message, flush=True)

    # -- the step -----------------------------------------------------------------------------------------------

    def agree(self, flag: bool) -> bool:
        """Whether any process raised ``flag`` (every process must leave the loop at the same step)."""
        if not self.info.enabled:
            return flag
        return all_reduce_sum([float(flag)], self.info, self.device)[0] > 0

    def autocast(self) -> Any:
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
                f"{self.epoch + 1}, step {self.step_in_epoch + 1}; stopped without saving this state ({kept}). "
                "Try a lower --lr, --clip-grad, longer --warmup-epochs, or --amp bf16 instead of fp16"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        m = unwrap_model(self.model)
        return {"model_name": m.model_name, "model_kwargs": json.loads(json.dumps(m.model_kwargs, default=list))}

    def save_state(self) -> None:
        """Write ``last.pt`` (all ranks take part in gathering RNG states; rank 0 writes)."""
        rngs = all_gather_objects(capture_rng(), self.info)
        if not self.info.is_main:
            return
        state = {
            **self.identity(),
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
            **self.extra_state(),
        }
        save_training_state(self.ckpt_dir / "last.pt", state)

    def save_weights(self, name: str, extra: dict[str, Any]) -> None:
        if self.info.is_main:
            save_checkpoint(unwrap_model(self.model), self.ckpt_dir / name, metadata={**self.weights_metadata(), **extra})

    def load_state(self) -> None:
        path = self.ckpt_dir / "last.pt"
        state = load_training_state(path)
        mine = self.identity()
        if (state["model_name"], state["model_kwargs"]) != (mine["model_name"], mine["model_kwargs"]):
            raise ValueError(
                f"{path} holds {state['model_name']} {state['model_kwargs']}, but this run builds "
                f"{mine['model_name']} {mine['model_kwargs']}; resume with the run's own settings or start a new "
                "run with --out"
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
            warnings.warn(f"{path} was written by {len(rngs)} processes, this run has {self.info.world_size}: "
                          "RNG streams are re-seeded, so the continuation is not bit-exact", stacklevel=2)
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        same_world = self.info.world_size == state.get("world_size", 1)
        self.sums = dict(state["sums"]) if same_world else {}  # another world size: this epoch's sums restart
        self.history = list(state["history"])
        self.best, self.best_epoch, self.elapsed = state["best"], state["best_epoch"], state["elapsed"]
        self.load_extra_state(state)
        self.reconcile_best(path)
        self.log(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    def reconcile_best(self, last: Path) -> None:
        """Make the resumed record of the best agree with ``best.safetensors`` after a crash between their writes.

        The file written by the crashed attempt at an epoch this run repeats is adopted with its score; a missing
        or older file (a version that wrote last.pt first, or a deleted file) is rewritten when last.pt's weights
        are those of the best epoch, and otherwise reported and the best chosen again from the epochs to come.
        """
        if self.best_epoch < 1:
            return
        best = self.ckpt_dir / "best.safetensors"
        try:
            meta = read_safetensors(best, metadata_only=True)[1] if best.is_file() else {}
            epoch, score = json.loads(meta.get("epoch", "null")), json.loads(meta.get(self.score_key, "null"))
        except ValueError:  # damaged (JSONDecodeError is a ValueError): as if missing
            epoch, score = None, None
        if epoch == self.best_epoch:
            return
        if isinstance(epoch, int) and epoch > self.epoch and isinstance(score, (int, float)):
            self.best, self.best_epoch = float(score), epoch
            self.log(f"note: {best} holds epoch {epoch} of the interrupted attempt, which this run repeats")
            return
        found = "missing" if epoch is None else f"holds epoch {epoch}"
        if (self.epoch, self.step_in_epoch) == (self.best_epoch, 0):  # last.pt holds the best epoch's weights
            self.save_weights("best.safetensors", {"epoch": self.best_epoch, self.score_key: self.best})
            self.log(f"note: {best} was {found}; rewrote it with epoch {self.best_epoch}'s weights from {last}")
            return
        warnings.warn(
            f"{best} is {found}, but {last} records the best {self.score_key} {self.best:.4g} at epoch "
            f"{self.best_epoch}, whose weights are no longer on disk (a crash between the two writes, or a removed "
            "file); the best weights are chosen again from the epochs still to come", stacklevel=2)
        self.best, self.best_epoch = -math.inf, -1

    # -- outputs --------------------------------------------------------------------------------------------------

    def write_metrics(self, status: str, final: dict[str, Any] | None = None) -> dict[str, Any]:
        metrics = {
            "status": status,
            **self.metrics_fields(),
            "params": count_params(unwrap_model(self.model)),
            "steps": self.global_step,
            "best_epoch": self.best_epoch,
            "train_time_s": round(self.elapsed, 2),
            "history": self.history,
            **(final or {}),
        }
        if self.info.is_main:
            write_json(self.run_dir / "metrics.json", metrics)
            if self.history:
                write_csv(self.run_dir / "metrics.csv", self.history)
                self.plot()
        return metrics

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Own the run directory (one process trains in it at a time), then train (:meth:`run_owned`)."""
        lock = self.own_run_dir()
        try:
            if not self.resume and (self.ckpt_dir / "last.pt").exists():
                raise FileExistsError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
            if self.info.is_main:
                stale = remove_stale_temp_files(self.run_dir)
                if stale:
                    self.log(f"removed {len(stale)} temporary file(s) that killed writers left in {self.run_dir}")
            return self.run_owned()
        finally:
            if lock is not None:
                lock.release()

    def own_run_dir(self) -> RunDirLock | None:
        """Rank 0 (the only writer) takes the run directory's lock, before anything is written to it; every
        process raises the same error if that fails (e.g. another run holds it, naming its PID)."""
        lock, error = None, None
        if self.info.is_main:
            try:
                lock = lock_run_dir(self.run_dir)
            except (RunDirBusy, OSError) as err:
                error = err
        error = all_gather_objects(error, self.info)[0]
        if error is not None:
            raise error
        return lock

    def run_owned(self) -> TrainResult:
        """Set up, resume if asked, run the epochs, and finish (the run directory is this process's)."""
        self.setup()
        if self.resume:
            self.load_state()
        cfg, info = self.config, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", cfg.to_dict())
            extra = {"device": str(self.device), "resumed_at_step": self.global_step if self.resume else None}
            name = "provenance.json" if not self.resume else f"provenance-resume-{self.global_step}.json"
            write_json(self.run_dir / name, provenance(cfg.seed, info.world_size, extra))
        self.tb = TensorBoard(self.run_dir / "tb" if info.is_main else None, purge_step=self.global_step or None)
        self.log(self.describe())
        status = "finished"
        try:
            with self.stop:
                while self.epoch < cfg.epochs:
                    if not self._train_epoch():
                        status = "interrupted"
                        break
        except NonFiniteLossError:
            self.write_metrics("stopped: non-finite loss")
            raise
        finally:
            self.tb.close()
        if status == "interrupted":
            self.save_state()
            metrics = self.write_metrics(status)
            self.log(f"stopped at epoch {self.epoch + 1}, step {self.step_in_epoch}; saved {self.ckpt_dir / 'last.pt'}")
            self.log(f"continue with: involution {self.command} --resume --out {self.run_dir}")
            return TrainResult(self.run_dir, status, metrics)
        final = self.finish()
        return TrainResult(self.run_dir, status, self.write_metrics(status, final))

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
            amounts = self.train_step(batch)
            for key, value in amounts.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
            self.step_in_epoch += 1
            self.global_step += 1
            lr = self.scheduler.get_last_lr()[0]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{self.running_loss():.4f}", lr=f"{lr:.3g}")
            if self.global_step % cfg.log_every == 0:
                self.tb.scalars({"train/loss_step": self.last_loss, "train/lr": lr}, self.global_step)
            if self.agree(self.stop.requested):
                stopped = True
                break
        if bar is not None:
            bar.close()
        self.elapsed += time.perf_counter() - start
        if stopped and self.step_in_epoch < self.steps_per_epoch:
            return False
        self._end_epoch(time.perf_counter() - start)
        return not stopped

    def _end_epoch(self, seconds: float) -> None:
        cfg, info = self.config, self.info
        keys = sorted(self.sums)
        totals = dict(zip(keys, all_reduce_sum([self.sums[k] for k in keys], info, self.device)))
        row: dict[str, Any] = {"epoch": self.epoch + 1, **self.epoch_row(totals)}
        row.update(lr=self.scheduler.get_last_lr()[0], time=round(seconds, 3))
        due = (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs
        row.update(self.validate() if due else self.no_validation())
        self.history.append(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = {}
        score = row.get(self.score_key, float("nan"))
        improved = score > self.best  # NaN compares False
        if improved:
            self.best, self.best_epoch = score, row["epoch"]
        self.tb.scalars({f"epoch/{k}": v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))},
                        row["epoch"])
        if improved:  # the weights first: last.pt never records a best that is not on disk
            self.save_weights("best.safetensors", {"epoch": row["epoch"], self.score_key: score})
        self.save_state()
        self.write_metrics("running")
        self.log(self.epoch_message(row))
