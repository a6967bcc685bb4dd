"""The Task protocol: what one kind of training (its data, model, loss, evaluation, prediction, pictures, and what
its run reports) tells the engine (:mod:`.loop`), which owns everything else: run directory, resume, torchrun,
schedule, checkpoints, progress. Implementations: :class:`~involution.tasks.classification.task.ClassificationTask`
and :class:`~involution.tasks.dense.task.DenseTask` (detection, segmentation)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from .distributed import DistInfo
from .run_config import RunConfig

TrainingLoop = Any  # the reporting hooks get the run itself (engine.loop.TrainingLoop, which imports this module)


@dataclass
class TaskData:
    """The data sets of a run (samples before augmentation) and what the model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]  # names of the model's classes
    source: str  # where the data came from (a data set name or a folder), for the logs and metrics
    info: dict[str, Any] = field(default_factory=dict)
    test: Dataset | None = None  # scored once after the last epoch (None: no test split)


class Task(ABC):
    """One kind of training. ``metric`` names the validation number (higher is better, ``val_<metric>`` in the
    history) that picks ``best.safetensors``; ``metric_label`` and ``metric_scale`` draw it in ``curves.png``."""

    name: str
    metric: str
    metric_label: str  # axis label of the curves' right panel, e.g. "box AP (%)"
    metric_scale: float = 100.0  # the metric times this is what the label says
    config_class: type[RunConfig]

    @property
    def command(self) -> str:  # what resumes a run: ``involution {command} --resume --out RUN``
        return f"{self.name} train"

    @property
    def run_prefix(self) -> str:  # a new run directory is ``runs/<run_prefix>-<time>``
        return self.name

    @abstractmethod
    def resolve(self, config: Any) -> Any:
        """``config`` with what the user left open filled in, and checked."""

    @abstractmethod
    def load_data(self, config: Any, log: Callable[[str], None]) -> TaskData: ...

    @abstractmethod
    def train_set(self, config: Any, data: TaskData) -> Dataset:
        """The training set keyed by ``(epoch, index)`` (:class:`~.distributed.ResumableSampler`), each sample
        augmented as :mod:`.seeding` seeds it."""

    def eval_set(self, config: Any, data: TaskData, split: Dataset) -> Dataset:
        """``split`` (``data.val`` or ``data.test``) ready for evaluation."""
        return split

    def collate(self, items: Sequence[Any]) -> Any:
        """A batch of ``items`` (default: torch's stacking)."""
        return default_collate(items)

    @abstractmethod
    def build_model(self, config: Any, data: TaskData) -> nn.Module: ...

    def prepare_model(self, model: nn.Module, config: Any, device: torch.device, info: DistInfo) -> nn.Module:
        """The model on ``device`` made ready to train (memory format, synchronised BatchNorm...)."""
        return model

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, device: torch.device,
             config: Any) -> tuple[Tensor, dict[str, float], float]:
        """The training loss of one batch (a scalar), more amounts to sum over the epoch, and the loss's weight in
        the epoch's mean (its sample count, or 1 for a per-step mean)."""

    def epoch_row(self, totals: dict[str, float]) -> dict[str, Any]:
        """The epoch's ``train_*`` history entries from its sums (default: every sum over the count)."""
        count = max(totals.pop("count", 1.0), 1.0)
        return {f"train_{k}": v / count for k, v in totals.items()}

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, info: DistInfo, data: TaskData,
                 amp: str = "none", progress: bool = False) -> dict[str, float]:
        """Validation metrics over ``loader`` (this process's shard), combined over all processes."""

    def no_validation(self) -> dict[str, float]:
        """The ``val_*`` entries of an epoch that is not validated (``--eval-every``)."""
        return {}

    def predict(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        """The model's output for one ``(3, H, W)`` image in [0, 1] (on the model's device), on the CPU."""
        raise NotImplementedError(f"the {self.name} task predicts through its own functions")

    def draw(self, image: Tensor, output: dict[str, Tensor], classes: Sequence[str], threshold: float = 0.5) -> Tensor:
        """A picture of ``output`` over ``image``: uint8 ``(3, H', W')``."""
        raise NotImplementedError(f"the {self.name} task draws no predictions")

    @abstractmethod
    def describe_data(self, run: TrainingLoop) -> str:
        """What the run trains on, in the line printed when training starts."""

    def epoch_scores(self, row: dict[str, Any]) -> str:
        """The scores shown in an epoch's line after its training loss."""
        score = row.get(f"val_{self.metric}", float("nan"))
        return f"  val {self.metric} {score:.4f}" if math.isfinite(score) else ""

    def final_metrics(self, run: TrainingLoop) -> dict[str, Any]:
        """After the last epoch: the run's final numbers (default: its last validation)."""
        last = run.history[-1] if run.history else {}
        return {k: v for k, v in last.items() if k.startswith("val_")}

    def final_message(self, run: TrainingLoop, final: dict[str, Any]) -> str:
        """The run's last line."""
        value = final.get(run.score_key, float("nan"))
        return (f"final val {self.metric} {value:.4f}; best {run.best:.4f} at epoch {run.best_epoch}; "
                f"run written to {run.run_dir}")

    @abstractmethod
    def weights_metadata(self, config: Any, data: TaskData) -> dict[str, Any]:
        """Metadata stored beside the weights in best/last.safetensors."""

    @abstractmethod
    def metrics_fields(self, run: TrainingLoop) -> dict[str, Any]:
        """Task fields of metrics.json (before the common ones)."""

    def extra_state(self, data: TaskData) -> dict[str, Any]:
        """More entries for ``last.pt``."""
        return {}
