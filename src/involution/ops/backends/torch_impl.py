"""The ``"torch"`` backend: pure PyTorch, runs on any device, never materialises a K*K-times copy.

It loops over the Kh*Kw taps; each tap is one broadcast multiply-add between a strided window of the input and
that tap's weights, restricted to the output pixels whose input pixel lies inside the image (so no padded copy of
the input is made either). The forward and grad_input accumulate in the result itself, in its layout (NCHW or
NHWC: the multiply-add then walks both operands with the same strides); the forward a few images at a time, so
the accumulator stays in cache. Low-precision inputs accumulate in a float32 temporary. It is the fallback when no
compiled backend is available, and a second, independent implementation for the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._shapes import Pair, is_channels_last
from .base import Backend, register_backend


def tap_range(size_in: int, size_out: int, stride: int, padding: int, offset: int) -> tuple[int, int, int]:
    """For one tap at ``offset`` (= u * dilation): the output rows ``[o0, o1)`` that read inside the input, and
    the input row ``i0`` read by ``o0``. Output row o reads input row o * stride - padding + offset."""
    o0 = max(0, -((offset - padding) // stride))  # ceil((padding - offset) / stride)
    o1 = min(size_out, (size_in - 1 + padding - offset) // stride + 1)
    return o0, o1, o0 * stride - padding + offset


def _taps(weight: Tensor, in_hw: Sequence[int], stride: Pair, padding: Pair, dilation: Pair):
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


def _accumulator(target: Tensor, dtype: torch.dtype) -> Tensor:
    """Zeros to sum into: ``target`` itself when it has ``dtype``, else a tensor of its shape in its layout (NHWC or
    NCHW; :func:`_write_back` copies it over). Every tap's multiply-add then walks the accumulator and the features
    with the same strides, which mixed layouts would not."""
    if target.dtype == dtype:
        return target.zero_()
    fmt = torch.channels_last if is_channels_last(target) else torch.contiguous_format
    return torch.empty(target.shape, dtype=dtype, device=target.device, memory_format=fmt).zero_()


def _write_back(target: Tensor, acc: Tensor) -> None:
    if acc is not target:
        target.copy_(acc)


def _operands(features: Tensor, weight: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward's and grad_input's operands in the accumulation dtype: ``features`` as (N, G, C/G, H, W),
    ``weight`` as (N, G, 1, Kh, Kw, Ho, Wo), and the accumulator for ``target`` with its (N, G, C/G, H, W) view."""
    g = weight.shape[1]
    acc_t = _acc_dtype(features.dtype)
    acc = _accumulator(target, acc_t)
    return features.to(acc_t).unflatten(1, (g, -1)), weight.to(acc_t).unsqueeze(2), acc, acc.unflatten(1, (g, -1))


# Images per pass over the taps: every tap reads and writes the whole accumulator, so it should stay in cache.
_CHUNK_BYTES = 1 << 20


def _cache_sized_chunks(features: Tensor) -> list[slice]:
    """Slices of the batch whose ``features``-shaped accumulator takes about ``_CHUNK_BYTES``."""
    n = features.shape[0]
    per_image = max(1, features[0].numel() * 4)
    step = max(1, _CHUNK_BYTES // per_image)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


class TorchBackend(Backend):
    name = "torch"

    def supports(self, device: torch.device) -> bool:
        return True

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        x, w, acc, grouped = _operands(input, weight, out)
        taps = list(_taps(weight, input.shape[2:], stride, padding, dilation))
        for batch in _cache_sized_chunks(out):
            a, xb, wb = grouped[batch], x[batch], w[batch]
            for u, v, (ro, co), (ri, ci) in taps:
                a[..., ro, co].addcmul_(xb[..., ri, ci], wb[:, :, :, u, v, ro, co])
        _write_back(out, acc)

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        gy, w, acc, grouped = _operands(grad_output, weight, grad_input)
        for u, v, (ro, co), (ri, ci) in _taps(weight, grad_input.shape[2:], stride, padding, dilation):
            grouped[..., ri, ci].addcmul_(gy[..., ro, co], w[:, :, :, u, v, ro, co])
        _write_back(grad_input, acc)

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
