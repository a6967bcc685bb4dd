"""The example input of an export and which of its dimensions (batch, height, width) stay dynamic."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

DIM_NAMES = {0: "batch", 2: "height", 3: "width"}


def example_shape(model: nn.Module, input_size: Sequence[int] | None, batch_size: int) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the export example: ``input_size`` (C, H, W) or (H, W), else ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default = tuple(cfg.get("input_size", (3, 224, 224)))
    size = tuple(int(s) for s in (input_size if input_size is not None else default))
    if len(size) == 2:
        size = (int(default[0]), *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (H, W) with positive sizes, got {input_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (int(batch_size), *size)


def random_input(shape: Sequence[int], seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_shape(shape: Sequence[int], dims: Sequence[int]) -> tuple[int, int, int, int]:
    """A different input than the example along the dynamic dimensions ``dims``, to show that they really are."""
    n, c, h, w = shape
    return (n + (0 in dims), c, h + 32 * (2 in dims), w + 16 * (3 in dims))


def dynamic_shapes(dims: Sequence[int]) -> tuple[dict[int, Any], ...] | None:
    """``torch.export``'s ``dynamic_shapes`` for the single input with the dimensions ``dims`` dynamic."""
    # Dim.AUTO lets torch.export work out the constraints itself (RedNets need H, W >= a few strides); named Dims
    # with hand-written ranges trip its solver on the ceil-mode pooling.
    if not dims:
        return None
    return ({d: torch.export.Dim.AUTO for d in dims},)


def dynamic_dims(model: nn.Module, example: Tensor, dynamic: bool, say: Callable[[str], None]) -> tuple[int, ...]:
    """The dimensions of ``example`` (N, C, H, W) that can stay dynamic: none unless ``dynamic``; height and
    width are fixed when they make a feature map 1 pixel, the batch when it is 1 (``say`` tells why)."""
    dims: tuple[int, ...] = (0, 2, 3) if dynamic else ()
    shape = tuple(example.shape)
    if dims and (size := _degenerate_map(model, example)) is not None:
        # torch.export assumes a dynamic size is never 0 or 1 and specialises the program to it when it is (a
        # RedNet-small's last map at 8x8 is 1x1): such an example fixes the height and width.
        dims = (0,)
        say(f"at input {shape} a feature map is {size[0]}x{size[1]}, and torch.export cannot keep a size of 1 "
            "dynamic: the height and width are fixed to the example's (give a larger input size to keep them "
            "dynamic)")
    if shape[0] < 2:
        dims = tuple(d for d in dims if d != 0)  # likewise a batch of 1
    return dims


def _map_sizes(model: nn.Module, x: Tensor) -> list[tuple[int, int]]:
    """The (height, width) of every 4-D tensor the submodules of ``model`` return for ``x``, in call order."""
    sizes: list[tuple[int, int]] = []

    def record(_module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4:
            sizes.append((int(out.shape[-2]), int(out.shape[-1])))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _degenerate_map(model: nn.Module, example: Tensor) -> tuple[int, int] | None:
    """A feature map size that follows the input's and is 1 pixel at ``example`` (None if there is none).

    A map whose size is 1 whatever the input (a global pooling's) does not count: only sizes that change with the
    input are symbolic in the exported program.
    """
    n, c, h, w = example.shape
    at_example = _map_sizes(model, example)
    at_double = _map_sizes(model, example.new_zeros(n, c, 2 * h, 2 * w))
    for small, large in zip(at_example, at_double):
        if any(a == 1 and b != 1 for a, b in zip(small, large)):
            return small
    return None
