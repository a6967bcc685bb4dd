"""The video task's configuration: :class:`VideoConfig` (``image_size`` is the canvas) and its recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..._checks import check_int, check_number
from ..classification.config import ClassifierConfig
from ..engine.run_config import check_run_options, required
from .data import SOURCES, ClipSpec


@dataclass
class VideoConfig(ClassifierConfig):
    """Everything a video run depends on; written to ``config.json``. ``None``: the recipe's value."""

    data: str = "digits"  # the images that move: digits (no files needed) or fashion-mnist (--data-dir)
    frames: int | None = None
    item_size: int | None = None
    directions: int | None = None
    min_speed: float | None = None
    max_speed: float | None = None
    jitter: int | None = None
    train_clips: int | None = None  # per epoch (each epoch draws new motions)
    val_clips: int | None = None
    test_clips: int | None = None
    still: bool = False  # the control: every frame of a clip is its first (the label can only be guessed)
    # channels_last (ClassifierConfig) is channels_last_3d here, the layout Involution3d is fastest in

    def clip_spec(self) -> ClipSpec:
        """How this run's clips are made (of a resolved config: no field left open)."""
        return ClipSpec(required("--frames", self.frames), required("--image-size", self.image_size),
                        required("--item-size", self.item_size), required("--directions", self.directions),
                        required("--min-speed", self.min_speed), required("--max-speed", self.max_speed),
                        required("--jitter", self.jitter), self.still)


# Sized for 2 CPU cores: video_rednet_tiny trains 5 epochs of 4,000 clips in about 4 minutes (docs/video.md).
RECIPE: dict[str, Any] = {
    "model": "video_rednet_tiny", "model_kwargs": {}, "frames": 8, "image_size": 32, "item_size": 16,
    "directions": 8, "min_speed": 0.5, "max_speed": 1.5, "jitter": 2, "train_clips": 4000, "val_clips": 1000,
    "test_clips": 2000, "epochs": 5, "batch_size": 64, "lr": 0.1, "optimizer": "sgd", "nesterov": True,
    "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0.5, "schedule": "cosine", "label_smoothing": 0.1,
    "channels_last": True,
}


def resolve(config: VideoConfig) -> VideoConfig:
    """A copy of ``config`` with every ``None`` filled from the recipe, checked."""
    values = config.to_dict()
    for key, default in RECIPE.items():
        if values.get(key) is None:
            values[key] = default
    resolved = VideoConfig.from_dict(values)
    check(resolved)
    return resolved


def check(config: VideoConfig) -> None:
    """Reject values that cannot work, naming the option."""
    if config.data not in SOURCES:
        raise ValueError(f"--data must be one of {', '.join(SOURCES)}, got {config.data!r}")
    check_run_options(config)
    if config.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--optimizer must be sgd or adamw, got {config.optimizer!r}")
    for option, value in (("--frames", config.frames), ("--image-size", config.image_size),
                          ("--item-size", config.item_size), ("--directions", config.directions),
                          ("--train-clips", config.train_clips), ("--val-clips", config.val_clips),
                          ("--test-clips", config.test_clips)):
        check_int(option, value, low=1)
    check_int("--jitter", config.jitter, low=0)
    check_number("--label-smoothing", config.label_smoothing or 0.0, low=0.0, high=1.0, high_open=True)
    config.clip_spec().check()
