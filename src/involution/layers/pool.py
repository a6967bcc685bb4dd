"""Average pooling with ``ceil_mode=True`` semantics, written so that its gradient is right under Inductor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_POOLS = {2: F.avg_pool2d, 3: F.avg_pool3d}


class CeilAvgPool(nn.Module):
    """``nn.AvgPool{1,2,3}d(stride, stride, ceil_mode=True)``: windows at the far edges that stick out of an input
    whose size the stride does not divide average only the elements inside it, so ``(N, C, *size) -> (N, C,
    *ceil(size / stride))``; the number of spatial dimensions is ``len(stride)``.

    Why not ``nn.AvgPool2d(..., ceil_mode=True)`` itself: torch 2.14's Inductor computes a wrong input gradient for
    it on sizes that the stride does not divide (measured: 4e-4 off on a 17x17 input). Here the input is zero-padded
    to a multiple of the stride, average-pooled, and each clipped window rescaled by ``prod(stride) / (its element
    count)``; on divisible sizes it is exactly ``F.avg_pool2d(x, stride)``, the official layer's pooling.

    ``divisor_override`` is avoided on purpose: the ONNX exporter drops it (AveragePool has no such attribute), which
    made every exported stride-2 involution's kernel generator see a quarter of its input.
    """

    def __init__(self, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.stride = tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.stride) == 1:
            # A sequence as the width of a height-1 image, as involution1d does: torch 2.14's Inductor fails on the
            # backward of a padded avg_pool1d with dynamic shapes ("cannot determine truth value of Relational").
            return _ceil_avg_pool(x.unsqueeze(2), (1, *self.stride)).squeeze(2)
        return _ceil_avg_pool(x, self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, ceil_mode=True"


def _ceil_avg_pool(x: Tensor, stride: tuple[int, ...]) -> Tensor:
    """:class:`CeilAvgPool` over the ``len(stride)`` (2 or 3) spatial dimensions of ``x``: ``(N, C, *size) -> (N, C,
    *ceil(size / stride))``."""
    size, pool = x.shape[2:], _POOLS[len(stride)]
    # The padding up to a multiple of the stride, ceil(n / s) * s - n, without a modulo: a Python modulo of a
    # symbolic size under torch.compile(dynamic=True) reaches BatchNorm's numel in the backward graph, which
    # Inductor cannot turn into tensor arithmetic ("no attribute 'python_mod'").
    pads = [(n + s - 1) // s * s - n for n, s in zip(size, stride)]
    # Under torch.compile take the general path for every size, so one graph serves odd and even sizes.
    if not torch.compiler.is_compiling() and not any(pads):
        return pool(x, stride, stride)
    means = pool(F.pad(x, [v for p in reversed(pads) for v in (0, p)]), stride, stride)
    counts = None  # the elements inside the input of each window (prod(stride) away from the far edges)
    for axis, (n, s) in enumerate(zip(size, stride)):
        inside = (n - torch.arange(means.shape[2 + axis], device=x.device) * s).clamp(max=s)
        inside = inside.view([-1 if a == axis else 1 for a in range(len(stride))])
        counts = inside if counts is None else counts * inside
    return means * (math.prod(stride) / counts.to(x.dtype))


class CeilAvgPool2d(CeilAvgPool):
    """:class:`CeilAvgPool` over images, ``(N, C, H, W) -> (N, C, ceil(H / sh), ceil(W / sw))``."""
