"""The ``"torch"`` backend: pure PyTorch, runs on any device, never materialises a K*K-times copy.

It loops over the Kh*Kw taps; each tap is one broadcast multiply-add between a strided window of the input and
that tap's weights, restricted to the output pixels whose input pixel lies inside the image (so no padded copy of
the input is made either). Extra memory is at most one output-sized temporary. Low-precision inputs accumulate in
float32. It is the fallback when no compiled backend is available, and a second, independent implementation for
the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._shapes import Pair
from . import register_backend


def tap_range(size_in: int, size_out: int, stride: int, padding: int, offset: int) -> tuple[int, int, int]:
    """For one tap at ``offset`` (= u * dilation): the output rows ``[o0, o1)`` that read inside the input, and
    the input row ``i0`` read by ``o0``. Output row o reads input row o * stride - padding + offset."""
    o0 = max(0, -((offset - padding) // stride))  # ceil((padding - offset) / stride)
    o1 = min(size_out, (size_in - 1 + padding - offset) // stride + 1)
    return o0, o1, o0 * stride - padding + offset


def _taps(weight: Tensor, in_hw: tuple[int, int], stride: Pair, padding: Pair, dilation: Pair):
    """Yield (u, v, out-slices, in-slices) for every tap that touches the image."""
    kh, kw, ho, wo = weight.shape[2:]
    for u in range(kh):
        r0, r1, ri = tap_range(in_hw[0], ho, stride[0], padding[0], u * dilation[0])
        if r1 <= r0:
            continue
        for v in range(kw):
            c0, c1, ci = tap_range(in_hw[1], wo, stride[1], padding[1], v * dilation[1])
            if c1 <= c0:
                continue
            out_sl = (slice(r0, r1), slice(c0, c1))
            in_sl = (
                slice(ri, ri + (r1 - r0 - 1) * stride[0] + 1, stride[0]),
                slice(ci, ci + (c1 - c0 - 1) * stride[1] + 1, stride[1]),
            )
            yield u, v, out_sl, in_sl


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class TorchBackend:
    name = "torch"

    def is_available(self) -> bool:
        return True

    def supports(self, device: torch.device) -> bool:
        return True

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        g = weight.shape[1]
        acc_t = _acc_dtype(input.dtype)
        x = input.to(acc_t).unflatten(1, (g, -1))  # (N, G, C/G, H, W)
        w = weight.to(acc_t).unsqueeze(2)  # (N, G, 1, Kh, Kw, Ho, Wo)
        acc = torch.zeros(out.shape, dtype=acc_t, device=out.device).unflatten(1, (g, -1))
        for u, v, (ro, co), (ri, ci) in _taps(weight, input.shape[2:], stride, padding, dilation):
            acc[..., ro, co].addcmul_(x[..., ri, ci], w[:, :, :, u, v, ro, co])
        out.copy_(acc.flatten(1, 2))

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        g = weight.shape[1]
        acc_t = _acc_dtype(grad_output.dtype)
        gy = grad_output.to(acc_t).unflatten(1, (g, -1))
        w = weight.to(acc_t).unsqueeze(2)
        acc = torch.zeros(grad_input.shape, dtype=acc_t, device=grad_input.device).unflatten(1, (g, -1))
        for u, v, (ro, co), (ri, ci) in _taps(weight, grad_input.shape[2:], stride, padding, dilation):
            acc[..., ri, ci].addcmul_(gy[..., ro, co], w[:, :, :, u, v, ro, co])
        grad_input.copy_(acc.flatten(1, 2))

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        g = grad_weight.shape[1]
        acc_t = _acc_dtype(input.dtype)
        gy = grad_output.to(acc_t).unflatten(1, (g, -1))
        x = input.to(acc_t).unflatten(1, (g, -1))
        grad_weight.zero_()
        for u, v, (ro, co), (ri, ci) in _taps(grad_weight, input.shape[2:], stride, padding, dilation):
            grad_weight[:, :, u, v, ro, co] = (gy[..., ro, co] * x[..., ri, ci]).sum(2)


register_backend(TorchBackend())
