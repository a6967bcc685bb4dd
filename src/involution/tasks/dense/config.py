"""Configuration of a detection or segmentation training run: one dataclass, filled in by a per-task recipe.

Resolution order, as for classification: dataclass defaults (``None`` = "the recipe decides") < the recipe of the
task and data set < explicit arguments. The ``scenes`` recipes are sized for a laptop CPU: a narrow RedNet-50
backbone (width 0.25) trained from scratch with ordinary BatchNorm on 128 x 128 generated scenes. The ``coco``
and ``folder`` recipes follow the official mmdet / mmseg settings (full width, frozen first stage and frozen BN
for detection, an ImageNet checkpoint expected through ``--backbone-checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..._checks import check_int, check_number
from ..engine.run_config import RunConfig, check_run_options

TASKS = ("detect", "segment")
DATASETS = {"detect": ("scenes", "coco"), "segment": ("scenes", "folder")}


@dataclass
class DenseConfig(RunConfig):
    """Everything a dense training run depends on; written to ``config.json`` in the run directory. ``checkpoint``:
    whole-model weights to start from (ours, or an official mmdet/mmseg file)."""

    data: str = "scenes"  # scenes | coco (detect) | folder (segment: images/+labels/ or the Cityscapes layout)
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | constant
    image_size: int = 128  # scenes' canvas; detection also resizes to it (min_size = max_size)
    task: str = "detect"  # detect | segment
    scenes_dir: str | None = None  # where generated scenes are written (default runs/scenes/<settings>)
    scene_source: str | None = None  # fashion-mnist | digits (None: fashion-mnist when data_dir is given)
    num_train: int = 400  # generated scenes
    num_val: int = 100
    backbone_checkpoint: str | None = None  # ImageNet RedNet-50 weights for the backbone (official or ours)
    aux_weight: float = 0.4  # segmentation: weight of the auxiliary head's loss (official 0.4)
    crop_size: int | None = None  # segmentation: random square training crop (None: whole images)


def _scene_detector(model: str, image_size: int) -> dict[str, Any]:
    # from scratch (no frozen stage, ordinary BN)
    kwargs: dict[str, Any] = {"backbone_kwargs": {"width": 0.25}, "fpn_channels": 64, "frozen_stages": -1,
                              "norm_eval": False, "min_size": image_size, "max_size": image_size}
    if "rcnn" in model:
        # fewer proposals and sampled RoIs than COCO needs: a scene holds at most 4 objects, and the RoI head is
        # most of a step's cost at this size
        kwargs.update(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, box_batch_size_per_image=128)
    return kwargs


# (task, data) -> defaults for the fields left at None; model_kwargs are merged (the user's win).
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("detect", "scenes"): {"model": "fasterrcnn_rednet50_fpn", "epochs": 8, "batch_size": 8, "lr": 0.02,
                           "weight_decay": 1e-4, "warmup_epochs": 0.5, "clip_grad": 10.0},
    ("detect", "coco"): {"model": "fasterrcnn_rednet50_fpn", "epochs": 12, "batch_size": 16, "lr": 0.02,
                         "weight_decay": 1e-4, "warmup_epochs": 0.1},
    ("segment", "scenes"): {"model": "fpn_rednet50", "epochs": 20, "batch_size": 8, "lr": 0.02,
                            "weight_decay": 5e-4, "warmup_epochs": 0.5},
    ("segment", "folder"): {"model": "fpn_rednet50", "epochs": 40, "batch_size": 16, "lr": 0.01,
                            "weight_decay": 5e-4, "warmup_epochs": 0.5, "crop_size": 512},
}


def _scene_model_kwargs(task: str, model: str, image_size: int) -> dict[str, Any]:
    if task == "detect":
        return _scene_detector(model, image_size)
    if model.startswith("upernet"):
        return {"backbone_kwargs": {"width": 0.25}, "head_channels": 64, "aux_channels": 32}
    return {"backbone_kwargs": {"width": 0.25}, "neck_channels": 64, "head_channels": 32}


def resolve(config: DenseConfig) -> DenseConfig:
    """``config`` with every ``None`` the recipe knows filled in (and the values checked)."""
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {', '.join(TASKS)}")
    if config.data not in DATASETS[config.task]:
        raise ValueError(f"--data {config.data!r} is not a {config.task} data set; choose one of "
                         f"{', '.join(DATASETS[config.task])}")
    if config.data != "scenes" and not config.data_dir:
        raise ValueError(f"--data {config.data} needs --data-dir (the data set's root folder)")
    recipe = RECIPES[(config.task, config.data)]
    values = config.to_dict()
    for key, value in recipe.items():
        if values.get(key) is None:
            values[key] = value
    if config.data == "scenes":
        # laptop-sized models (narrow backbone, trained from scratch); the user's model kwargs win
        base = _scene_model_kwargs(config.task, values["model"], config.image_size)
        values["model_kwargs"] = {**base, **config.model_kwargs}
        if values["scene_source"] is None:
            values["scene_source"] = "fashion-mnist" if config.data_dir else "digits"
    resolved = DenseConfig.from_dict(values)
    check_run_options(resolved)
    for name, value in (("--num-train", resolved.num_train), ("--num-val", resolved.num_val),
                        ("--image-size", resolved.image_size), ("--crop-size", resolved.crop_size)):
        if value is not None:
            check_int(name, value, low=1)
    check_number("--aux-weight", resolved.aux_weight, low=0.0)
    return resolved
