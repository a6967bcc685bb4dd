"""The run's checkpoints: ``last.pt`` (everything a resumed run needs, see :mod:`.state`) and the weights files
``best.safetensors`` / ``last.safetensors``, written and read back by :class:`RunCheckpoints`."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ...models import read_safetensors, save_checkpoint
from .distributed import all_gather_objects
from .state import capture_rng, clean_state_dict, load_training_state, restore_rng, save_training_state, unwrap_model


class RunCheckpoints:
    """The checkpoint half of :class:`~.loop.TrainingLoop` (it holds the model, optimizer, counters, history)."""

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
            **self.task.extra_state(self.data),
        }
        save_training_state(self.ckpt_dir / "last.pt", state)

    def save_weights(self, name: str, extra: dict[str, Any]) -> None:
        if self.info.is_main:
            metadata = {**self.task.weights_metadata(self.config, self.data), **extra}
            save_checkpoint(unwrap_model(self.model), self.ckpt_dir / name, metadata=metadata)

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
        self.replan(state, path)
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
        self.reconcile_best(path)
        self.log(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    def replan(self, state: dict[str, Any], path: Path) -> None:
        """Hold ``--epochs`` of a resumed run to what ``state`` has done: fewer epochs than were begun is refused
        (a history is never shortened, nor config.json made to disagree with it); another number of epochs
        re-plans the learning-rate schedule from the step reached, said in one line, with the re-planned lr taking
        effect at once. Called before anything is written."""
        begun = state["epoch"] + (1 if state["step_in_epoch"] else 0)  # an epoch under way counts as begun
        asked = self.config.epochs
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
        before = self.optimizer.param_groups[0]["lr"]
        step = self.scheduler.last_epoch
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)  # the new plan's lr at this step, from the next step on
        self.log(f"--epochs {asked} instead of the run's {planned}: the {self.config.schedule} learning-rate "
                 f"schedule is re-planned over {asked} epochs from step {step} (lr {before:.4g} -> "
                 f"{self.optimizer.param_groups[0]['lr']:.4g})")

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

