"""The Task protocol: what one kind of training (its data, model, loss, evaluation, and what its run reports) tells
the engine (:mod:`.loop`), which owns everything else: run directory, resume, torchrun, schedule, checkpoints,
progress. A ``Task[C]`` trains with configs of type ``C`` (a :class:`~.run_config.RunConfig`); its hooks get small
typed records (:mod:`.context`), never the loop, and a task object holds no per-run state (what it decides about
the model is returned as a :class:`~.context.ModelSetup`). Optional abilities are declared apart
(:mod:`.capabilities`). Implementations: :class:`~involution.tasks.classification.task.ClassificationTask`,
:class:`~involution.tasks.video.task.VideoTask` and :class:`~involution.tasks.dense.task.DenseTask` (detection,
segmentation)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .context import ConfigT, EvalContext, ModelSetup, RunContext, RunRecord, TaskData
from .distributed import DistInfo

__all__ = ["ConfigT", "EvalContext", "ModelSetup", "RunContext", "RunRecord", "Task", "TaskData"]


class Task(ABC, Generic[ConfigT]):
    """One kind of training. ``metric`` names the validation number (higher is better, ``val_<metric>`` in the
    history) that picks ``best.safetensors``; ``metric_label`` and ``metric_scale`` draw it in ``curves.png``."""

    name: ClassVar[str]
    metric: ClassVar[str]
    metric_label: ClassVar[str]  # axis label of the curves' right panel, e.g. "box AP (%)"
    metric_scale: ClassVar[float] = 100.0  # the metric times this is what the label says
    config_class: type[ConfigT]

    @property
    def command(self) -> str:  # what resumes a run: ``involution {command} --resume --out RUN``
        return f"{self.name} train"

    @property
    def run_prefix(self) -> str:  # a new run directory is ``runs/<run_prefix>-<time>``
        return self.name

    @property
    def score_key(self) -> str:  # the history entry that picks best.safetensors
        return f"val_{self.metric}"

    @abstractmethod
    def resolve(self, config: ConfigT) -> ConfigT:
        """``config`` with what the user left open filled in, and checked."""

    @abstractmethod
    def load_data(self, config: ConfigT, log: Callable[[str], None]) -> TaskData: ...

    @abstractmethod
    def train_set(self, config: ConfigT, data: TaskData) -> Dataset:
        """The training set keyed by ``(epoch, index)`` (:class:`~.distributed.ResumableSampler`), each sample
        augmented as :mod:`.seeding` seeds it."""

    def eval_set(self, config: ConfigT, data: TaskData, split: Dataset) -> Dataset:
        """``split`` (``data.val`` or ``data.test``) ready for evaluation."""
        return split

    def collate(self, items: Sequence[Any]) -> Any:
        """A batch of ``items`` (default: torch's stacking)."""
        return default_collate(list(items))

    @abstractmethod
    def build_model(self, config: ConfigT, data: TaskData) -> ModelSetup:
        """The run's model (on the CPU, initial weights loaded) and what is known of it (``macs``)."""

    def prepare_model(self, setup: ModelSetup, config: ConfigT, device: torch.device, info: DistInfo) -> ModelSetup:
        """``setup`` with its model (already on ``device``) made ready to train (memory format, synchronised
        BatchNorm...), and the choices that go with it (optimizer, compilation). Default: as built."""
        return setup

    @abstractmethod
    def loss(self, net: nn.Module, batch: Any, run: RunContext[ConfigT]) -> tuple[Tensor, dict[str, float], float]:
        """The training loss of one batch (a scalar), more amounts to sum over the epoch, and the loss's weight in
        the epoch's mean (its sample count, or 1 for a per-step mean)."""

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        """The epoch's ``train_*`` history entries from its sums (default: every sum over the count)."""
        count = max(totals.pop("count", 1.0), 1.0)
        return {f"train_{k}": v / count for k, v in totals.items()}

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, context: EvalContext) -> dict[str, float]:
        """Validation metrics over ``loader`` (this process's shard), combined over all processes."""

    def no_validation(self) -> dict[str, float]:
        """The ``val_*`` entries of an epoch that is not validated (``--eval-every``)."""
        return {}

    @abstractmethod
    def describe_data(self, run: RunContext[ConfigT]) -> str:
        """What the run trains on, in the line printed when training starts."""

    def epoch_scores(self, row: dict[str, Any]) -> str:
        """The scores shown in an epoch's line after its training loss."""
        score = row.get(self.score_key, float("nan"))
        return f"  val {self.metric} {score:.4f}" if math.isfinite(score) else ""

    def final_metrics(self, run: RunContext[ConfigT], record: RunRecord) -> dict[str, Any]:
        """After the last epoch: the run's final numbers (default: its last validation)."""
        last = record.history[-1] if record.history else {}
        return {k: v for k, v in last.items() if k.startswith("val_")}

    def final_message(self, run: RunContext[ConfigT], record: RunRecord, final: dict[str, Any]) -> str:
        """The run's last line."""
        value = final.get(self.score_key, float("nan"))
        return (f"final val {self.metric} {value:.4f}; best {record.best:.4f} at epoch {record.best_epoch}; "
                f"run written to {record.run_dir}")

    @abstractmethod
    def weights_metadata(self, config: ConfigT, data: TaskData) -> dict[str, Any]:
        """Metadata stored beside the weights in best/last.safetensors."""

    @abstractmethod
    def metrics_fields(self, run: RunContext[ConfigT], record: RunRecord) -> dict[str, Any]:
        """Task fields of metrics.json (before the common ones)."""

    def extra_state(self, data: TaskData) -> dict[str, Any]:
        """More entries for ``last.pt``."""
        return {}
