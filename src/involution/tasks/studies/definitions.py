"""The studies: which claims about involution each one tests, and the training runs (cells) it takes.

Every full study trains on Fashion-MNIST (``--data-dir``, e.g. ``../shared/data``) with the RedNet-26-small
skeleton sized for 2 CPU cores (width 0.25, stride-2 first conv: 0.46 M parameters, 7.2 M multiply-adds per
28x28 image). A cell on a fraction of the training set runs a fixed number of epochs for that fraction
(:data:`FMNIST_EPOCHS`), so that every fraction gets a few hundred SGD steps. The validation split is scored
once, at the end; the test accuracy of the final weights is the number compared.

``quick=True`` replaces all of that with digits, width 0.125 and one epoch: a smoke test of the whole pipeline
that runs in seconds (its numbers mean nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .runner import Cell

# epochs per training-set fraction: 1% = 540 images ... 100% = 54,000 (after the 10% validation hold-out); at
# batch 128 that is 240, 420, 504 and 842 SGD steps: a similar budget per cell, not training to convergence
FMNIST_EPOCHS = {0.01: 60, 0.05: 20, 0.2: 6, 1.0: 2}
ABLATION_FRACTION = 0.2  # studies 3-5 train on 20% of Fashion-MNIST (10,800 images)
SEEDS = (0, 1, 2)
# The arms a study's conclusions hang on get more seeds: with 3 a side, Welch's t-test has 2-4 degrees of freedom
# and cannot resolve a 1-point difference at these spreads.
KEY_SEEDS = (0, 1, 2, 3, 4)

_SKELETON = {"width": 0.25, "stem_stride": 2}
REDNET = ("rednet26_small", {**_SKELETON, "recompute_kernel": False})
RESNET = ("resnet26_small", dict(_SKELETON))
RESNET_MATCHED = ("resnet26_small", {"width": 0.2, "stem_stride": 2})  # 0.47 M parameters, RedNet's 0.46 M


_REDNET_DEFAULTS = {"spatial": "involution", "kernel_size": 7, "group_channels": 16, "reduction_ratio": 4,
                    "coord_channels": False}


@dataclass(frozen=True)
class StudyOptions:
    data_dir: str | None = None
    quick: bool = False
    seeds: Sequence[int] = SEEDS
    key_seeds: Sequence[int] = KEY_SEEDS  # for the arms a conclusion hangs on (a study's ``key`` arms)
    threads: int | None = None  # per training run; not part of a cell's identity


@dataclass(frozen=True)
class Study:
    """A question and the cells that answer it. ``x``: what a cell's ``group`` is (the plot's x-axis)."""

    name: str
    question: str
    x: str
    cells: Callable[[StudyOptions], list[Cell]]
    log_x: bool = False
    percent: bool = False  # groups are fractions, written as percentages
    # (variant, group) -> the (variant, group) it is compared with in the report
    reference_of: Callable[[str, Any], tuple[str, Any] | None] | None = None


def _run(model: tuple[str, dict], opts: StudyOptions, fraction: float = ABLATION_FRACTION, **kwargs: Any) -> dict:
    """The training settings of one cell."""
    name, model_kwargs = model
    # a RedNet default spelt out is left out, so that the same run has the same key in every study
    kwargs = {k: v for k, v in kwargs.items() if _REDNET_DEFAULTS.get(k, object()) != v}
    model_kwargs = {**model_kwargs, **kwargs}
    extra = {"threads": opts.threads} if opts.threads else {}
    if opts.quick:
        model_kwargs = {**model_kwargs, "width": 0.125 * model_kwargs.get("width", 0.25) / 0.25}
        model_kwargs.pop("stem_stride", None)  # 8x8 digits stay at full resolution
        return {"data": "digits", "model": name, "model_kwargs": model_kwargs, "epochs": 1, "train_fraction": fraction,
                "eval_every": 1, **extra}
    epochs = FMNIST_EPOCHS[fraction]
    return {"data": "fashion-mnist", "data_dir": opts.data_dir, "model": name, "model_kwargs": model_kwargs,
            "epochs": epochs, "batch_size": 128, "lr": 0.1, "train_fraction": fraction, "eval_every": epochs, **extra}


def _cells(
    opts: StudyOptions, arms: Sequence[tuple[str, Any, dict]], key: Callable[[str, Any], bool] | None = None
) -> list[Cell]:
    """One cell per (arm, seed); an arm is (variant, group, training settings). Arms for which ``key(variant,
    group)`` is true are run with ``opts.key_seeds`` (at least ``opts.seeds``), the others with ``opts.seeds``."""
    if opts.quick:
        return [Cell(variant, group, opts.seeds[0], train) for variant, group, train in arms]
    key_seeds = list(dict.fromkeys([*opts.seeds, *opts.key_seeds]))
    return [
        Cell(variant, group, seed, train)
        for seed in key_seeds
        for variant, group, train in arms
        if seed in opts.seeds or (key is not None and key(variant, group))
    ]


# -- 1. data regime -------------------------------------------------------------------------------------------------


def _data_regime(opts: StudyOptions) -> list[Cell]:
    fractions = (0.5, 1.0) if opts.quick else tuple(FMNIST_EPOCHS)
    arms = []
    for fraction in fractions:
        arms += [
            ("RedNet-26 (w 0.25)", fraction, _run(REDNET, opts, fraction)),
            ("ResNet-26 (w 0.25, same depth/width)", fraction, _run(RESNET, opts, fraction)),
            ("ResNet-26 (w 0.2, same params)", fraction, _run(RESNET_MATCHED, opts, fraction)),
        ]
    # the claim compares the scarcest and the fullest data
    return _cells(opts, arms, key=lambda _v, fraction: fraction in (0.01, 1.0))


# -- 2. width -------------------------------------------------------------------------------------------------------


def _width(opts: StudyOptions) -> list[Cell]:
    widths = (0.125, 0.25) if opts.quick else (0.125, 0.25, 0.5)
    arms = []
    for w in widths:
        arms += [
            ("RedNet-26", w, _run((REDNET[0], {**REDNET[1], "width": w}), opts)),
            ("ResNet-26", w, _run((RESNET[0], {**RESNET[1], "width": w}), opts)),
        ]
    # the conclusion rests on the widest pair (where the gap reverses)
    return _cells(opts, arms, key=lambda _v, w: w == 0.5)


# -- 3. dynamic vs static, shared vs channel-specific ---------------------------------------------------------------

SPATIAL_ARMS = (
    ("depthwise conv (static, channel-specific)", "depthwise"),
    ("shared static kernel (static, shared)", "static_shared"),
    ("dynamic channel-specific (dynamic, C*K*K)", "dynamic"),
    ("involution (dynamic, shared)", "involution"),
    ("local self-attention (G heads)", "attention"),
)


def _components(opts: StudyOptions) -> list[Cell]:
    arms = [(label, kind, _run(REDNET, opts, spatial=kind)) for label, kind in SPATIAL_ARMS]
    # dynamic vs static and shared vs channel-specific: every arm but attention
    return _cells(opts, arms, key=lambda _v, kind: kind != "attention")


# -- 4. group size, kernel size, reduction ratio --------------------------------------------------------------------


ABLATION_BASE = {"kernel size K": 7, "channels per group": 16, "reduction ratio r": 4}  # the RedNet defaults


def _ablations(opts: StudyOptions) -> list[Cell]:
    # group_channels 4096 puts every channel of every layer into one group: G = 1
    settings = [("kernel size K", "kernel_size", k) for k in (3, 5, 7, 9)]
    settings += [("channels per group", "group_channels", g) for g in (4, 8, 16, 4096)]
    settings += [("reduction ratio r", "reduction_ratio", r) for r in (1, 2, 4, 8)]
    if opts.quick:
        settings = [("kernel size K", "kernel_size", 3), ("kernel size K", "kernel_size", 7)]
    arms = [(f"{label}", value, _run(REDNET, opts, **{key: value})) for label, key, value in settings]
    # the group-size conclusions (G = 1 underperforms, 4-8 channels per group help), r = 8 against the default r = 4,
    # and the default itself (K = 7)
    return _cells(opts, arms, key=lambda variant, value: variant == "channels per group" or (variant, value) in {
        ("reduction ratio r", 4), ("reduction ratio r", 8), ("kernel size K", 7)})


# -- 5. position information --------------------------------------------------------------------------------------


def _position(opts: StudyOptions) -> list[Cell]:
    arms = [
        ("involution", "no coordinates", _run(REDNET, opts)),
        ("involution + coordinate channels", "with coordinates", _run(REDNET, opts, coord_channels=True)),
    ]
    return _cells(opts, arms)


STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        Study("data_regime", "Is involution's advantage over convolution largest when data is scarce?",
              "training-set fraction", _data_regime, log_x=True, percent=True,
              reference_of=lambda v, g: ("RedNet-26 (w 0.25)", g)),
        Study("width", "Does the gap between involution and convolution networks shrink as they get wider?",
              "width multiplier", _width, log_x=True, reference_of=lambda v, g: ("RedNet-26", g)),
        Study("components", "Dynamic vs static kernels, shared vs channel-specific: which brings what?",
              "spatial layer", _components,
              reference_of=lambda v, g: (SPATIAL_ARMS[3][0], "involution")),
        Study("ablations", "Group size, kernel size and reduction ratio: what do they cost and buy?",
              "value", _ablations, reference_of=lambda v, g: (v, ABLATION_BASE[v])),
        Study("position", "Does giving the kernel generator the pixel's position change accuracy?",
              "generator input", _position,
              reference_of=lambda v, g: ("involution", "no coordinates")),
    )
}
