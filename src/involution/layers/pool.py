"""Average pooling with ``ceil_mode=True`` semantics, written so that its gradient is right under Inductor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CeilAvgPool2d(nn.Module):
    """``nn.AvgPool2d(stride, stride, ceil_mode=True)``: windows at the bottom/right edge that stick out of an odd-sized
    input average only the pixels inside it, so ``(N, C, H, W) -> (N, C, ceil(H / sh), ceil(W / sw))``.

    Why not ``nn.AvgPool2d(..., ceil_mode=True)`` itself: torch 2.14's Inductor computes a wrong input gradient for
    it on sizes that the stride does not divide (measured: 4e-4 off on a 17x17 input). Here the input is zero-padded
    to a multiple of the stride, average-pooled, and each clipped window rescaled by ``sh * sw / (its pixel count)``;
    on divisible sizes it is exactly ``F.avg_pool2d(x, stride)``, the official layer's pooling.

    ``divisor_override`` is avoided on purpose: the ONNX exporter drops it (AveragePool has no such attribute), which
    made every exported stride-2 involution's kernel generator see a quarter of its input.
    """

    def __init__(self, stride: tuple[int, int]) -> None:
        super().__init__()
        self.stride = tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        sh, sw = self.stride
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % sh, (-w) % sw
        # Under torch.compile take the general path for every size, so one graph serves odd and even sizes.
        if not torch.compiler.is_compiling() and pad_h == 0 and pad_w == 0:
            return F.avg_pool2d(x, self.stride, self.stride)
        means = F.avg_pool2d(F.pad(x, (0, pad_w, 0, pad_h)), self.stride, self.stride)
        rows = (h - torch.arange(means.shape[-2], device=x.device) * sh).clamp(max=sh)
        cols = (w - torch.arange(means.shape[-1], device=x.device) * sw).clamp(max=sw)
        # the padded windows' means counted sh * sw pixels; the clipped ones hold fewer (1 inside the image)
        return means * (sh * sw / (rows[:, None] * cols[None, :]).to(x.dtype))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, ceil_mode=True"
