"""The example input of an export and which of its dimensions (batch and the spatial ones) stay dynamic: images
``(N, C, H, W)``, clips ``(N, C, T, H, W)`` (a model whose ``pretrained_cfg["input_size"]`` is ``(C, T, H, W)``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# The names of an input's dimensions, by its rank (4: images, 5: clips); None for the channels.
DIM_NAMES: dict[int, tuple[str | None, ...]] = {
    4: ("batch", None, "height", "width"),
    5: ("batch", None, "frames", "height", "width"),
}


def dim_names(rank: int) -> tuple[str | None, ...]:
    """The names of the dimensions of an input of ``rank`` (none known but for 4 and 5)."""
    return DIM_NAMES.get(rank, (None,) * rank)


def example_shape(model: nn.Module, input_size: Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
    """``(N, C, H, W)`` of the export example (a clip model's ``(N, C, T, H, W)``): ``input_size`` (C, H, W) or
    (H, W) (a clip model's (C, T, H, W) or (T, H, W)), else ``pretrained_cfg``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default = tuple(cfg.get("input_size", (3, 224, 224)))
    spatial = len(default) - 1  # 2 for images, 3 for clips
    size = tuple(int(s) for s in (input_size if input_size is not None else default))
    if len(size) == spatial:
        size = (int(default[0]), *size)
    if len(size) != spatial + 1 or min(size) < 1:
        axes = "H, W" if spatial == 2 else "T, H, W"
        raise ValueError(f"input_size must be (C, {axes}) or ({axes}) with positive sizes, got {input_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return (int(batch_size), *size)


def random_input(shape: Sequence[int], seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_shape(shape: Sequence[int], dims: Sequence[int]) -> tuple[int, ...]:
    """A different input than the example along the dynamic dimensions ``dims``, to show that they really are: one
    more sample, 32 more rows, 16 more columns, 2 more frames."""
    grow = {0: 1, len(shape) - 2: 32, len(shape) - 1: 16}
    if len(shape) == 5:
        grow[2] = 2
    return tuple(int(s) + grow.get(d, 0) * (d in dims) for d, s in enumerate(shape))


def dynamic_shapes(dims: Sequence[int]) -> tuple[dict[int, Any], ...] | None:
    """``torch.export``'s ``dynamic_shapes`` for the single input with the dimensions ``dims`` dynamic."""
    # Dim.AUTO lets torch.export work out the constraints itself (RedNets need H, W >= a few strides); named Dims
    # with hand-written ranges trip its solver on the ceil-mode pooling.
    if not dims:
        return None
    return ({d: torch.export.Dim.AUTO for d in dims},)


def dynamic_dims(model: nn.Module, example: Tensor, dynamic: bool, say: Callable[[str], None]) -> tuple[int, ...]:
    """The dimensions of ``example`` (N, C, H, W) or (N, C, T, H, W) that can stay dynamic: none unless
    ``dynamic``; the spatial ones are fixed when they make a feature map 1 wide, the batch when it is 1 (``say``
    tells why)."""
    dims: tuple[int, ...] = tuple(d for d in range(example.dim()) if d != 1) if dynamic else ()
    shape = tuple(example.shape)
    if dims and (size := _degenerate_map(model, example)) is not None:
        # torch.export assumes a dynamic size is never 0 or 1 and specialises the program to it when it is (a
        # RedNet-small's last map at 8x8 is 1x1): such an example fixes the spatial sizes.
        dims = (0,)
        axes = " and ".join(n for n in dim_names(example.dim())[2:] if n)
        say(f"at input {shape} a feature map is {'x'.join(map(str, size))}, and torch.export cannot keep a size of "
            f"1 dynamic: the {axes} are fixed to the example's (give a larger input size to keep them dynamic)")
    if shape[0] < 2:
        dims = tuple(d for d in dims if d != 0)  # likewise a batch of 1
    return dims


def _map_sizes(model: nn.Module, x: Tensor) -> list[tuple[int, ...]]:
    """The spatial sizes of every tensor of ``x``'s rank that the submodules of ``model`` return for ``x``, in call
    order."""
    sizes: list[tuple[int, ...]] = []

    def record(_module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == x.dim():
            sizes.append(tuple(int(s) for s in out.shape[2:]))

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _degenerate_map(model: nn.Module, example: Tensor) -> tuple[int, ...] | None:
    """A feature map size that follows the input's and is 1 wide along some axis at ``example`` (None if there is
    none).

    A map whose size is 1 whatever the input (a global pooling's) does not count: only sizes that change with the
    input are symbolic in the exported program.
    """
    at_example = _map_sizes(model, example)
    at_double = _map_sizes(model, example.new_zeros(*example.shape[:2], *(2 * s for s in example.shape[2:])))
    for small, large in zip(at_example, at_double):
        if any(a == 1 and b != 1 for a, b in zip(small, large)):
            return small
    return None
