"""The options every training run has (:class:`RunConfig`, the base of each task's config dataclass), their
checks, the config's round trip through a dict / JSON (``config.json``), and a run's config when it resumes."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..._checks import check_int, check_number

# What --schedule, --amp and --device accept: the configs check values against these, the command lines offer them.
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("none", "bf16", "fp16")  # autocast off, bfloat16, float16 (with a GradScaler)
DEVICES = ("auto", "cpu", "cuda")

C = TypeVar("C", bound="RunConfig")
T = TypeVar("T")


@dataclass
class RunConfig:
    """The fields every training run has; subclassed by each task's config
    (:class:`~involution.tasks.classification.TrainConfig`, :class:`~involution.tasks.dense.DenseConfig`), which
    sets its own defaults (``None``: the task's recipe decides)."""

    data: str = ""  # the data set (each task's config names its default)
    data_dir: str | None = None
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # initial weights (fine-tuning), any format create_model(checkpoint=) reads
    epochs: int | None = None
    batch_size: int | None = None  # global: split across processes under torchrun
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None  # cosine | constant
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    image_size: int | None = None
    seed: int = 0
    workers: int = 0
    amp: str = "none"  # none | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    eval_every: int = 1
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """The config of ``values``; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class RunPlan:
    """The numbers of a resolved :class:`RunConfig` that the recipe may leave open (``None``) until a task's
    ``resolve`` fills them in: what the engine trains by, typed as the values they are."""

    epochs: int
    batch_size: int  # global
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    schedule: str  # cosine | constant

    @classmethod
    def of(cls, config: RunConfig) -> RunPlan:
        """``config``'s plan; ``ValueError`` naming the option a task's ``resolve`` left open."""
        return cls(epochs=required("--epochs", config.epochs), batch_size=required("--batch-size", config.batch_size),
                   lr=required("--lr", config.lr), momentum=required("--momentum", config.momentum),
                   weight_decay=required("--weight-decay", config.weight_decay),
                   warmup_epochs=required("--warmup-epochs", config.warmup_epochs),
                   schedule=required("--schedule", config.schedule))


def required(option: str, value: T | None) -> T:
    """``value`` of a resolved config's ``option``, which the recipe may leave ``None`` until ``resolve``."""
    if value is None:
        raise ValueError(f"{option} was left open: the task's resolve() must fill it in before training")
    return value


# model arguments the training run sets itself (from the data set, or --checkpoint), not --model-kwargs
RUN_SET_MODEL_KWARGS = ("num_classes", "in_chans", "checkpoint", "features_only", "out_indices")


def check_run_options(config: RunConfig) -> None:
    """Reject values of the options every training run has that cannot work, naming each option as it is typed on
    the command line (``--epochs must be an integer >= 1, got 0``): the API gets the checks the parser makes."""
    check_int("--epochs", config.epochs, low=1)
    check_int("--batch-size", config.batch_size, low=1)
    check_number("--lr", config.lr, low=0.0, low_open=True)
    check_number("--momentum", config.momentum, low=0.0, high=1.0, high_open=True)
    check_number("--weight-decay", config.weight_decay, low=0.0)
    check_number("--warmup-epochs", config.warmup_epochs, low=0.0)
    if config.clip_grad is not None:
        check_number("--clip-grad", config.clip_grad, low=0.0, low_open=True)
    check_int("--seed", config.seed, low=0, high=2**32 - 1)
    check_int("--workers", config.workers, low=0)
    if config.threads is not None:
        check_int("--threads", config.threads, low=1)
    check_int("--eval-every", config.eval_every, low=1)
    check_int("--log-every", config.log_every, low=1)
    for name, value, choices in (("--schedule", config.schedule, SCHEDULES), ("--amp", config.amp, AMP_MODES),
                                 ("--device", config.device, DEVICES)):
        if value not in choices:
            raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    if not isinstance(config.model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of model arguments, got {config.model_kwargs!r}")
    reserved = sorted(set(config.model_kwargs) & set(RUN_SET_MODEL_KWARGS))
    if reserved:
        raise ValueError(f"--model-kwargs {', '.join(reserved)}: set by the run itself (the data set gives the "
                         "classes and channels, --checkpoint the initial weights); remove it")


# Options a resumed run may change; anything else must match the checkpoint (exactness, and no silent mix-ups).
RESUME_MUTABLE = ("workers", "threads", "log_every", "eval_every", "device")


def resume_values(run_dir: str | os.PathLike, saved: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The saved config values of ``run_dir`` with ``overrides`` applied; refuses changes that break resumption
    (``epochs`` may change: the resumed run refuses fewer than it has begun and re-plans the schedule for more,
    :meth:`~.checkpoints.RunCheckpoints.replan`)."""
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


def resume_config(config_class: type[C], run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> C:
    """The ``config_class`` config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that
    break resumption."""
    saved = config_class.from_dict(saved_config(run_dir)).to_dict()
    return config_class.from_dict(resume_values(run_dir, saved, overrides))
