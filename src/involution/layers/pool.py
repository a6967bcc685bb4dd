"""Average pooling with ``ceil_mode=True`` semantics, written so that its gradient is right under Inductor."""

from __future__ import annotations

from typing import List

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


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

    ``torch.fx`` keeps the pooling as one node (its padding depends on the input's size) and TorchScript compiles it.
    """

    def __init__(self, stride: tuple[int, ...]) -> None:
        super().__init__()
        self.stride = tuple(stride)
        # the window as the 2-D or 3-D pooling takes it, a list (TorchScript types a tuple by its length)
        self._window = [1, *self.stride] if len(self.stride) == 1 else list(self.stride)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.stride) == 1:
            # A sequence as the width of a height-1 image, as involution1d does: torch 2.14's Inductor fails on the
            # backward of a padded avg_pool1d with dynamic shapes ("cannot determine truth value of Relational").
            return ceil_avg_pool(x.unsqueeze(2), self._window).squeeze(2)
        return ceil_avg_pool(x, self._window)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, ceil_mode=True"


@torch.fx.wrap  # one node in a traced graph: its padding depends on the input's size
def ceil_avg_pool(x: Tensor, stride: List[int]) -> Tensor:
    """:class:`CeilAvgPool` over the ``len(stride)`` (2 or 3) spatial dimensions of ``x``: ``(N, C, *size) -> (N, C,
    *ceil(size / stride))``."""
    size = x.shape[2:]
    # The padding up to a multiple of the stride, ceil(n / s) * s - n, without a modulo: a Python modulo of a
    # symbolic size under torch.compile(dynamic=True) reaches BatchNorm's numel in the backward graph, which
    # Inductor cannot turn into tensor arithmetic ("no attribute 'python_mod'").
    pads = [(size[i] + stride[i] - 1) // stride[i] * stride[i] - size[i] for i in range(len(stride))]
    # Under torch.compile take the general path for every size, so one graph serves odd and even sizes.
    if not _compiling() and max(pads) == 0:
        return _avg_pool(x, stride)
    padding: List[int] = []
    for p in pads[::-1]:  # F.pad lists the last dimension first
        padding += [0, p]
    means = _avg_pool(F.pad(x, padding), stride)
    # the elements inside the input of each window (prod(stride) away from the far edges), and that product
    counts = torch.ones([1] * len(stride), dtype=torch.long, device=x.device)
    full = 1
    for axis in range(len(stride)):
        s = stride[axis]
        inside = (size[axis] - torch.arange(means.shape[2 + axis], device=x.device) * s).clamp(max=s)
        counts = counts * inside.view([-1 if a == axis else 1 for a in range(len(stride))])
        full *= s
    return means * (full / counts.to(x.dtype))


def _avg_pool(x: Tensor, stride: List[int]) -> Tensor:
    if len(stride) == 2:
        return F.avg_pool2d(x, stride, stride)
    return F.avg_pool3d(x, stride, stride)


def _compiling() -> bool:
    """Under ``torch.compile`` (never true when TorchScript runs this)."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling()


class CeilAvgPool2d(CeilAvgPool):
    """:class:`CeilAvgPool` over images, ``(N, C, H, W) -> (N, C, ceil(H / sh), ceil(W / sw))``."""
