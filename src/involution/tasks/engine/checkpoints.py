"""The run's checkpoints: ``last.pt`` (everything a resumed run needs, see :mod:`.state`) and the weights files
``best.safetensors`` / ``last.safetensors``, written and read back by :class:`RunCheckpoints`, a component of the
loop that is given exactly what it saves and restores: the trained parts (:class:`TrainedParts`) and the run's
counters (:class:`RunProgress`)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...models import read_safetensors, save_checkpoint
from .distributed import DistInfo, all_gather_objects
from .run_config import RunConfig, RunPlan
from .state import capture_rng, clean_state_dict, load_training_state, restore_rng, save_training_state, unwrap_model


@dataclass
class RunProgress:
    """Where a run stands: what ``last.pt`` records beside the trained parts (the loop advances it)."""

    epoch: int = 0  # epochs done
    step_in_epoch: int = 0
    global_step: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's running sums on this process
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = -1
    elapsed: float = 0.0  # training seconds


@dataclass(frozen=True)
class TrainedParts:
    """What training changes and a checkpoint restores: the plain model and its optimizer, schedule, scaler."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


class RunCheckpoints:
    """The checkpoints of one run in ``ckpt_dir``: ``weights_metadata`` and ``extra_state`` are the task's entries
    of the weights files and of ``last.pt``; ``score_key`` the history entry that picks the best weights."""

    def __init__(self, ckpt_dir: Path, parts: TrainedParts, config: RunConfig, info: DistInfo, score_key: str,
                 weights_metadata: dict[str, Any], extra_state: dict[str, Any], log: Callable[[str], None]) -> None:
        self.ckpt_dir, self.parts, self.config, self.info = ckpt_dir, parts, config, info
        self.score_key, self.log = score_key, log
        self.weights_metadata, self.extra_state = weights_metadata, extra_state  # the task's, fixed for the run

    def identity(self) -> dict[str, Any]:
        m = unwrap_model(self.parts.model)
        return {"model_name": m.model_name, "model_kwargs": json.loads(json.dumps(m.model_kwargs, default=list))}

    def save_state(self, progress: RunProgress) -> None:
        """Write ``last.pt`` (all ranks take part in gathering RNG states; rank 0 writes)."""
        rngs = all_gather_objects(capture_rng(), self.info)
        if not self.info.is_main:
            return
        parts = self.parts
        state = {
            **self.identity(),
            "model": clean_state_dict(unwrap_model(parts.model).state_dict()),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rngs,
            "epoch": progress.epoch,
            "step_in_epoch": progress.step_in_epoch,
            "global_step": progress.global_step,
            "sums": dict(progress.sums),
            "history": progress.history,
            "best": progress.best,
            "best_epoch": progress.best_epoch,
            "elapsed": progress.elapsed,
            "config": self.config.to_json(),
            "world_size": self.info.world_size,
            **self.extra_state,
        }
        save_training_state(self.ckpt_dir / "last.pt", state)

    def save_weights(self, name: str, extra: dict[str, Any]) -> None:
        if self.info.is_main:
            metadata = {**self.weights_metadata, **extra}
            save_checkpoint(unwrap_model(self.parts.model), self.ckpt_dir / name, metadata=metadata)

    def load_state(self, progress: RunProgress) -> None:
        """Restore the trained parts, every RNG and ``progress`` from ``last.pt``."""
        path = self.ckpt_dir / "last.pt"
        state = load_training_state(path)
        mine = self.identity()
        if (state["model_name"], state["model_kwargs"]) != (mine["model_name"], mine["model_kwargs"]):
            raise ValueError(
                f"{path} holds {state['model_name']} {state['model_kwargs']}, but this run builds "
                f"{mine['model_name']} {mine['model_kwargs']}; resume with the run's own settings or start a new "
                "run with --out"
            )
        parts = self.parts
        try:
            unwrap_model(parts.model).load_state_dict(state["model"])
            parts.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: the saved state does not fit this model/optimizer: {err}") from None
        parts.scheduler.load_state_dict(state["scheduler"])
        self.replan(state, path)
        parts.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            restore_rng(rngs[self.info.rank])
        else:
            warnings.warn(f"{path} was written by {len(rngs)} processes, this run has {self.info.world_size}: "
                          "RNG streams are re-seeded, so the continuation is not bit-exact", stacklevel=2)
        progress.epoch, progress.step_in_epoch = state["epoch"], state["step_in_epoch"]
        progress.global_step = state["global_step"]
        same_world = self.info.world_size == state.get("world_size", 1)
        progress.sums = dict(state["sums"]) if same_world else {}  # another world size: this epoch's sums restart
        progress.history = list(state["history"])
        progress.best, progress.best_epoch, progress.elapsed = state["best"], state["best_epoch"], state["elapsed"]
        self.reconcile_best(progress, path)

    def replan(self, state: dict[str, Any], path: Path) -> None:
        """Hold ``--epochs`` of a resumed run to what ``state`` has done: fewer epochs than were begun is refused
        (a history is never shortened, nor config.json made to disagree with it); another number of epochs
        re-plans the learning-rate schedule from the step reached, said in one line, with the re-planned lr taking
        effect at once. Called before anything is written."""
        begun = state["epoch"] + (1 if state["step_in_epoch"] else 0)  # an epoch under way counts as begun
        asked = RunPlan.of(self.config).epochs
        if asked < begun:
            under_way = f", epoch {begun} under way" if state["step_in_epoch"] else ""
            raise ValueError(
                f"--epochs {asked}: {path} has {state['epoch']} epoch(s) done{under_way}; a resumed run cannot end "
                f"before them: pass --epochs {begun} or more, or train a new run with another --out")
        try:
            planned = json.loads(state.get("config", "{}")).get("epochs")
        except (TypeError, ValueError, AttributeError):  # an older or odd record: no plan to compare with
            planned = None
        if planned is None or planned == asked:
            return
        before = self.parts.optimizer.param_groups[0]["lr"]
        step = self.parts.scheduler.last_epoch
        for group, base, factor in zip(self.parts.optimizer.param_groups, self.parts.scheduler.base_lrs,
                                       self.parts.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)  # the new plan's lr at this step, from the next step on
        self.log(f"--epochs {asked} instead of the run's {planned}: the {self.config.schedule} learning-rate "
                 f"schedule is re-planned over {asked} epochs from step {step} (lr {before:.4g} -> "
                 f"{self.parts.optimizer.param_groups[0]['lr']:.4g})")

    def reconcile_best(self, progress: RunProgress, last: Path) -> None:
        """Make the resumed record of the best agree with ``best.safetensors`` after a crash between their writes.

        The file written by the crashed attempt at an epoch this run repeats is adopted with its score; a missing
        or older file (a version that wrote last.pt first, or a deleted file) is rewritten when last.pt's weights
        are those of the best epoch, and otherwise reported and the best chosen again from the epochs to come.
        """
        if progress.best_epoch < 1:
            return
        best = self.ckpt_dir / "best.safetensors"
        try:
            meta = read_safetensors(best, metadata_only=True)[1] if best.is_file() else {}
            epoch, score = json.loads(meta.get("epoch", "null")), json.loads(meta.get(self.score_key, "null"))
        except ValueError:  # damaged (JSONDecodeError is a ValueError): as if missing
            epoch, score = None, None
        if epoch == progress.best_epoch:
            return
        if isinstance(epoch, int) and epoch > progress.epoch and isinstance(score, (int, float)):
            progress.best, progress.best_epoch = float(score), epoch
            self.log(f"note: {best} holds epoch {epoch} of the interrupted attempt, which this run repeats")
            return
        found = "missing" if epoch is None else f"holds epoch {epoch}"
        if (progress.epoch, progress.step_in_epoch) == (progress.best_epoch, 0):  # last.pt: the best epoch's weights
            self.save_weights("best.safetensors", {"epoch": progress.best_epoch, self.score_key: progress.best})
            self.log(f"note: {best} was {found}; rewrote it with epoch {progress.best_epoch}'s weights from {last}")
            return
        warnings.warn(
            f"{best} is {found}, but {last} records the best {self.score_key} {progress.best:.4g} at epoch "
            f"{progress.best_epoch}, whose weights are no longer on disk (a crash between the two writes, or a "
            "removed file); the best weights are chosen again from the epochs still to come", stacklevel=2)
        progress.best, progress.best_epoch = -math.inf, -1

