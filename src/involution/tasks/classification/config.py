"""Training configuration: one dataclass, and recipes that fill in what the user did not say.

Resolution order: dataclass defaults (``None`` = "the recipe decides") < the recipe < explicit arguments. The
recipe defaults to the data set's own (``digits``, ``fashion-mnist``, ``cifar10``, ``imagefolder``); ``imagenet``
is the paper's ImageNet recipe and applies to ``--data imagefolder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..._checks import check_int, check_number
from ..engine.run_config import RunConfig, check_run_options

DATASETS = ("digits", "fashion-mnist", "cifar10", "imagefolder")


@dataclass
class ClassifierConfig(RunConfig):
    """The options of every classifier's run (images or clips): how the model is optimised, laid out, compiled and
    synchronised (:meth:`~.task.ClassifierTask.prepare_model` reads them)."""

    optimizer: str | None = None  # sgd | adamw
    nesterov: bool | None = None
    label_smoothing: float | None = None
    channels_last: bool | None = None  # channels_last (images) or channels_last_3d (clips)
    compile: bool = False
    compile_backend: str = "inductor"
    sync_bn: bool = False


@dataclass
class TrainConfig(ClassifierConfig):
    """Everything a training run depends on; written to ``config.json`` in the run directory. ``lr`` None:
    ``base_lr * batch_size / base_batch``."""

    data: str = "digits"
    recipe: str | None = None  # None: the data set's recipe
    base_lr: float | None = None
    base_batch: int | None = None
    val_fraction: float | None = None  # held out of the training split when the data set has no validation split
    train_fraction: float = 1.0  # of the (remaining) training split, stratified, fixed per seed: data-regime studies
    augment: bool = True


# Shared by every recipe: SGD with Nesterov momentum, cosine schedule, label smoothing (as the paper's).
_COMMON: dict[str, Any] = dict(
    optimizer="sgd", momentum=0.9, nesterov=True, schedule="cosine", label_smoothing=0.1, model_kwargs={},
    channels_last=False,
)

# Per-recipe defaults for every field left at None. lr = base_lr * batch_size / base_batch.
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {
        **_COMMON, "model": "rednet26_small", "model_kwargs": {"width": 0.25}, "image_size": 8, "epochs": 30,
        "batch_size": 64, "base_lr": 0.1, "base_batch": 64, "weight_decay": 5e-4, "warmup_epochs": 1,
        "val_fraction": 0.1,
    },
    # sized for 2 CPU cores: a stride-2 first conv runs the net at 14x14 (about 4x cheaper than 28x28), kernels
    # stored rather than regenerated in the backward (faster; memory is no concern at this size), channels_last
    "fashion-mnist": {
        **_COMMON, "model": "rednet26_small",
        "model_kwargs": {"width": 0.375, "stem_stride": 2, "recompute_kernel": False}, "channels_last": True,
        "image_size": 28, "epochs": 12, "batch_size": 256, "base_lr": 0.1, "base_batch": 128, "weight_decay": 5e-4,
        "warmup_epochs": 0.5, "val_fraction": 0.1,
    },
    "cifar10": {
        **_COMMON, "model": "rednet26_small", "model_kwargs": {"width": 0.5}, "image_size": 32, "epochs": 100,
        "batch_size": 128, "base_lr": 0.1, "base_batch": 128, "weight_decay": 5e-4, "warmup_epochs": 2,
        "val_fraction": 0.1,
    },
    "imagefolder": {
        **_COMMON, "model": "rednet26", "image_size": 224, "epochs": 90, "batch_size": 64, "base_lr": 0.1,
        "base_batch": 256, "weight_decay": 1e-4, "warmup_epochs": 5, "val_fraction": 0.0,
    },
    # The paper's (official mmcls config): SGD Nesterov, lr 0.8 at batch 2048 scaled linearly, 5 warmup epochs,
    # cosine to 0, 130 epochs, label smoothing 0.1, RandomResizedCrop 224 + flip; test resize 256, centre crop 224.
    "imagenet": {
        **_COMMON, "model": "rednet50", "image_size": 224, "epochs": 130, "batch_size": 256, "base_lr": 0.8,
        "base_batch": 2048, "weight_decay": 1e-4, "warmup_epochs": 5, "val_fraction": 0.0,
    },
}


def resolve(config: TrainConfig) -> TrainConfig:
    """A copy of ``config`` with every ``None`` filled from its recipe, and the learning rate scaled."""
    if config.data not in DATASETS:
        raise ValueError(f"unknown data set {config.data!r}; choose one of {', '.join(DATASETS)}")
    recipe_name = config.recipe or config.data
    if recipe_name not in RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; choose one of {', '.join(RECIPES)}")
    if recipe_name == "imagenet" and config.data != "imagefolder":
        raise ValueError("--recipe imagenet trains on an ImageNet-layout folder: use it with --data imagefolder")
    values = config.to_dict()
    values["recipe"] = recipe_name
    recipe = RECIPES[recipe_name]
    for key, default in recipe.items():
        if key == "model_kwargs":
            # the recipe's model_kwargs belong to the recipe's model; a user-chosen model starts from none
            if config.model is None:
                values[key] = {**default, **config.model_kwargs}
        elif values.get(key) is None:
            values[key] = default
    if values["lr"] is None:
        values["lr"] = values["base_lr"] * values["batch_size"] / values["base_batch"]
    resolved = TrainConfig.from_dict(values)
    check(resolved)
    return resolved


def check(config: TrainConfig) -> None:
    """Reject values that cannot work, naming the option."""
    check_run_options(config)
    if config.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--optimizer must be sgd or adamw, got {config.optimizer!r}")
    check_int("--image-size", config.image_size, low=1)
    check_number("--val-fraction", config.val_fraction or 0.0, low=0.0, high=1.0, high_open=True)
    check_number("--train-fraction", config.train_fraction, low=0.0, high=1.0, low_open=True)
    check_number("--label-smoothing", config.label_smoothing or 0.0, low=0.0, high=1.0, high_open=True)
