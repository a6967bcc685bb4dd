"""The input shape a model is measured at (``involution summary``, :mod:`.flops`): from what the user gives, or
the model's ``pretrained_cfg``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .checkpoint_checks import model_in_chans

InputSize = int | Sequence[int]


def input_shape(model: nn.Module, input_size: InputSize | None) -> tuple[int, ...]:
    """``(N, C, H, W)`` from an int or ``(H, W)`` (the model's channels), ``(C, H, W)``, ``(N, C, H, W)``, or the
    model's pretrained_cfg; a clip model's (its cfg's input_size ``(C, T, H, W)``) ``(N, C, T, H, W)`` alike.
    Channels other than those the model declares are refused before its first convolution."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    declared = model_in_chans(model)  # None for a bare layer: its channels are the caller's business
    cfg_size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans, dims = declared or int(cfg_size[0]), len(cfg_size) - 1
    size = input_size if input_size is not None else cfg_size
    shape = (size,) * dims if isinstance(size, int) else tuple(int(s) for s in size)
    shape = {dims: (1, in_chans, *shape), dims + 1: (1, *shape)}.get(len(shape), shape)
    if len(shape) != dims + 2 or min(shape) < 1:
        axes = "H, W" if dims == 2 else "T, H, W"
        raise ValueError(f"input_size must be an int, ({axes}), (C, {axes}) or (N, C, {axes}) of positive sizes, "
                         f"got {size}")
    if declared is not None and shape[1] != declared:
        sizes = "H W" if dims == 2 else "T H W"
        raise ValueError(f"input_size {size}: {getattr(model, 'model_name', None) or type(model).__name__} takes "
                         f"{declared} input channel(s), not {shape[1]}; give {sizes}, or C {sizes} with C = {declared}")
    return shape
