"""Moving-item clips, made here from still images (nothing downloaded): a Fashion-MNIST item (or a scikit-learn
digit, the no-data-dir fallback), shrunk to ``item_size``, moves in a straight line across a black ``canvas`` for
``frames`` frames; the label is the direction of motion (one of ``directions`` evenly spaced angles). A still frame
does not say where the item is going, so a model has to compare frames: the time axis carries the label.

Each clip is drawn from one 64-bit number (a numpy generator seeded with it): the direction, a speed in
``[min_speed, max_speed]`` pixels per frame, a start that keeps the whole path on the canvas, and a jitter of up to
``jitter`` pixels per frame on each axis. Validation and test clips come from fixed numbers (the same for every run
seed); training clips are redrawn every epoch from ``(seed, epoch, index)`` (:mod:`~..engine.seeding`), so the
same items move in new directions each epoch, identically in any process and after a resume.

Splits: train and validation items are disjoint parts of the image set's training split (validation: the last
``val_items`` share of a fixed permutation), test items come from its test split.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..classification.data import TensorImages, load_splits
from ..engine.seeding import sample_hashes

DIRECTION_NAMES = {4: ["right", "up", "left", "down"],
                   8: ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"]}
SOURCES = ("digits", "fashion-mnist")
_VAL, _TEST = 1, 2  # stream ids of the fixed draws of the validation and test clips


@dataclass(frozen=True)
class ClipSpec:
    """How clips are made: ``(1, frames, canvas, canvas)`` uint8, an item of ``item_size`` pixels moving."""

    frames: int = 8
    canvas: int = 32
    item_size: int = 16
    directions: int = 8
    min_speed: float = 1.0
    max_speed: float = 2.0
    jitter: int = 1
    still: bool = False  # every frame is the first one: the control that shows what a still frame gives away

    def check(self) -> None:
        """Reject sizes that cannot work, naming the option: the longest path must fit on the canvas."""
        if self.frames < 2 or self.directions < 2 or self.item_size < 1 or self.canvas <= self.item_size:
            raise ValueError(f"clips need --frames >= 2, --directions >= 2 and 1 <= --item-size < --image-size, "
                             f"got {self.frames}, {self.directions}, {self.item_size}, {self.canvas}")
        if not 0 < self.min_speed <= self.max_speed or self.jitter < 0:
            raise ValueError(f"need 0 < --min-speed <= --max-speed and --jitter >= 0, got {self.min_speed}, "
                             f"{self.max_speed}, {self.jitter}")
        longest = self.max_speed * (self.frames - 1) + 2 * self.jitter
        if longest > self.canvas - self.item_size:
            raise ValueError(f"a path of up to {longest:g} pixels ({self.frames} frames at --max-speed "
                             f"{self.max_speed:g}, jitter {self.jitter}) does not fit the "
                             f"{self.canvas - self.item_size} pixels an item of {self.item_size} can travel on a "
                             f"canvas of {self.canvas}")

    @property
    def classes(self) -> list[str]:
        return DIRECTION_NAMES.get(self.directions, [f"angle-{k}" for k in range(self.directions)])


def draw_path(spec: ClipSpec, seed: int) -> tuple[int, np.ndarray]:
    """The label and the top-left corners ``(frames, 2)`` (row, column) of the clip drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    label = int(rng.integers(spec.directions))
    angle = 2 * math.pi * label / spec.directions  # 0: right, counter-clockwise (rows grow downwards)
    speed = rng.uniform(spec.min_speed, spec.max_speed)
    velocity = speed * np.array([-math.sin(angle), math.cos(angle)])  # (row, column) per frame
    travel = velocity * (spec.frames - 1)
    room = spec.canvas - spec.item_size
    low = np.maximum(0.0, -travel) + spec.jitter
    high = room - np.maximum(0.0, travel) - spec.jitter
    start = rng.uniform(low, high)
    steps = np.arange(spec.frames)[:, None]
    shake = rng.integers(-spec.jitter, spec.jitter + 1, size=(spec.frames, 2))
    corners = np.clip(np.rint(start + steps * velocity).astype(np.int64) + shake, 0, room)
    return label, np.repeat(corners[:1], spec.frames, axis=0) if spec.still else corners


def render(item: Tensor, corners: np.ndarray, canvas: int) -> Tensor:
    """The clip ``(1, T, canvas, canvas)`` of ``item`` ``(s, s)`` with its top-left corner at ``corners`` ``(T, 2)``."""
    size = item.shape[-1]
    clip = torch.zeros(1, len(corners), canvas, canvas, dtype=item.dtype)
    for t, (row, col) in enumerate(corners.tolist()):
        clip[0, t, row:row + size, col:col + size] = item
    return clip


def shrink(images: Tensor, size: int) -> Tensor:
    """Images ``(N, 1, h, w)`` (uint8, or float in [0, 1]) as uint8 ``(N, size, size)`` (antialiased bilinear)."""
    x = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)


class Clips(Dataset):
    """Clips of ``items`` ``(M, s, s)`` uint8: item ``i % M`` for clip ``i``, ``count`` clips.

    ``fixed_seed`` given: clip ``i`` is drawn from ``(fixed_seed, stream, i)``, the same for every key. Otherwise
    the keys are ``(epoch, index)`` pairs and clip ``index`` of ``epoch`` is drawn from ``(seed, epoch, index)``.
    Item: (float clip ``(1, T, H, W)``, normalised with ``mean``/``std``, label).
    """

    def __init__(self, items: Tensor, count: int, spec: ClipSpec, seed: int, fixed: bool, stream: int = 0,
                 mean: float = 0.0, std: float = 1.0) -> None:
        self.items, self.count, self.spec = items, count, spec
        self.seed, self.fixed, self.stream = seed, fixed, stream
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return self.count

    def clip_seed(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """(index, the seed of its draw) of ``key``."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        first = self.stream if self.fixed else epoch
        return index, int(sample_hashes(self.seed, np.array([first]), np.array([index]))[0])

    def raw(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        """The uint8 clip ``(1, T, H, W)`` and label of ``key``."""
        index, seed = self.clip_seed(key)
        label, corners = draw_path(self.spec, seed)
        return render(self.items[index % len(self.items)], corners, self.spec.canvas), label

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        clip, label = self.raw(key)
        return (clip.float() / 255.0 - self.mean) / self.std, label


@dataclass
class ClipSplits:
    train: Clips
    val: Clips
    test: Clips
    spec: ClipSpec
    mean: float
    std: float


def _in_memory(split: Dataset) -> TensorImages:
    """``split`` of a built-in source: its images are one tensor in memory."""
    if not isinstance(split, TensorImages):
        raise TypeError(f"clips are made from images in memory, not a {type(split).__name__}")
    return split


def load_clips(source: str, data_dir: str | os.PathLike | None, spec: ClipSpec, counts: tuple[int, int, int],
               seed: int, val_items: float = 0.1, data_seed: int = 0) -> ClipSplits:
    """Train / val / test clips of ``source``'s images; ``counts``: clips per split; ``seed``: the training draws.

    The items of each split, the validation and test clips and the normalisation depend on ``data_seed`` only.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown clip source {source!r}; choose one of {', '.join(SOURCES)}")
    spec.check()
    splits = load_splits(source, data_dir, spec.item_size, 0.0)
    train_images = shrink(_in_memory(splits.train).images, spec.item_size)
    test_images = shrink(_in_memory(splits.test).images, spec.item_size)
    order = torch.from_numpy(np.random.default_rng(data_seed).permutation(len(train_images)))
    n_val = max(1, round(val_items * len(order)))
    train_items, val_items_t = train_images[order[:-n_val]], train_images[order[-n_val:]]
    test_items = test_images[torch.from_numpy(np.random.default_rng(data_seed).permutation(len(test_images)))]
    val = Clips(val_items_t, counts[1], spec, data_seed, fixed=True, stream=_VAL)
    sample = torch.stack([val.raw(i)[0] for i in range(min(len(val), 256))]).float() / 255.0
    mean, std = float(sample.mean()), float(sample.std())
    val.mean, val.std = mean, std  # the statistics come from its own raw clips
    return ClipSplits(
        Clips(train_items, counts[0], spec, seed, fixed=False, mean=mean, std=std),
        val,
        Clips(test_items, counts[2], spec, data_seed, fixed=True, stream=_TEST, mean=mean, std=std),
        spec, mean, std,
    )
