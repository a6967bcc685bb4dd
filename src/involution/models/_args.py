"""The arguments of the residual families (RedNet, ResNet), checked once for both: stage depths, width, flags,
global pooling and the stem's stride."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._checks import check_flag, check_int, check_number


def scaled_channels(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, round(channels * width))


# The widest multiplier accepted: 16 already gives a RedNet-50 of about 4 billion parameters; a typo such as
# width=1e6 must not make the process allocate until the machine runs out of memory.
MAX_WIDTH = 16.0


def check_stage_args(layers: Sequence[int], width: float, in_chans: int) -> tuple[int, ...]:
    """Validate the arguments every residual net here shares; returns the four stage depths as ints."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 4:
        raise TypeError(f"layers must give 4 stage depths >= 1, got {layers!r}")
    layers = tuple(check_int("layers (each stage depth)", n, low=1) for n in layers)
    check_number("width", width, low=0.0, high=MAX_WIDTH, low_open=True)
    check_int("in_chans", in_chans, low=1)
    return layers


def check_flags(**flags: Any) -> None:
    """Each keyword must be True or False (a string such as ``'no'`` from ``--model-kwargs`` would be true)."""
    for name, value in flags.items():
        check_flag(name, value)


#: timm's ``global_pool`` values that these nets have: ``"avg"`` (global average pooling) and ``""`` (none).
POOL_TYPES = ("avg", "")


def check_global_pool(global_pool: Any, num_classes: int) -> str:
    """``global_pool`` checked against :data:`POOL_TYPES`; ``""`` (no pooling) needs ``num_classes`` 0, since the
    classifier takes pooled ``(N, C)`` features (timm's rule too)."""
    if global_pool not in POOL_TYPES:
        raise ValueError(
            f"global_pool must be 'avg' (average pooling) or '' (no pooling: the head returns the last map "
            f"(N, C, h, w), with num_classes=0), got {global_pool!r}"
        )
    if global_pool == "" and num_classes > 0:
        raise ValueError(
            f"global_pool='' (no pooling) needs num_classes=0, got {num_classes}: the classifier takes pooled "
            "(N, C) features"
        )
    return global_pool


def stem_stride_for(stem_stride: int | None, small_input: bool) -> int:
    """The stride of a net's first convolution: by default 1 for small inputs, 2 otherwise."""
    if stem_stride is None:
        return 1 if small_input else 2
    if isinstance(stem_stride, bool) or stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    return int(stem_stride)
