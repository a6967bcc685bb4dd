"""The 3-D involution and its two gradients as sums over depth taps of the 2-D op: what the 3-D op runs on a backend
without 3-D kernels of its own (``"torch"``; ``"cpu"`` and ``"triton"`` have theirs), and its ONNX decomposition.

For each depth tap ``t`` the output depths ``z`` read input depth ``z * sd - pd + t * dd``, so the depth axis joins
the batch and one 2-D involution per (sample, tap) aggregates the ``Kh x Kw`` window of every output depth at once:
tap ``t`` is the 2-D op on the ``N * Do`` images ``padded[n, :, z * sd + t * dd]`` (the input padded in depth,
gathered channels-last) with the kernels ``w[n, :, t, :, :, z]`` (a view when the generator's output is
channels_last_3d). The gradients are the same sums with the 2-D gradient ops: grad_input scatters each tap's image
gradients back into the padded depths, grad_weight writes tap ``t``'s kernels' gradients.

bfloat16/float16 are summed in float32 across all ``Kd * Kh * Kw`` taps and rounded once: every 2-D tap runs in
float32 with autocast off (the op has already applied autocast's casts). Inputs have one dtype (the op's check).
"""

from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from ._library import involution2d_op
from ._shapes import active_autocast_dtype

_bwd_in2d = torch.ops.involution.involution2d_backward_input
_bwd_w2d = torch.ops.involution.involution2d_backward_weight


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _padded(x: Tensor, pd: int, acc: torch.dtype) -> Tensor:
    """``x`` (N, C, D, H, W) zero-padded in depth, in ``acc``, channels_last_3d (each depth slice an NHWC image)."""
    padded = F.pad(x, [0, 0, 0, 0, pd, pd]) if pd > 0 else x
    return padded.to(acc, memory_format=torch.channels_last_3d)


def _images(v: Tensor) -> Tensor:
    """(N, C, Do, H, W) -> the N*Do images (N*Do, C, H, W), gathered NHWC (a view when v is NDHWC and N == 1)."""
    return v.permute(0, 2, 3, 4, 1).flatten(0, 1).permute(0, 3, 1, 2)


def _volumes(images: Tensor, n: int) -> Tensor:
    """The inverse of :func:`_images`: (N*Do, C, H, W) -> (N, C, Do, H, W), a view."""
    return images.unflatten(0, (n, -1)).permute(0, 2, 1, 3, 4)


def _tap_kernels(w: Tensor, t: int, acc: torch.dtype) -> Tensor:
    """Tap ``t``'s kernels (N, G, Kd, Kh, Kw, Do, Ho, Wo) -> (N*Do, G, Kh, Kw, Ho, Wo), in ``acc``."""
    return w[:, :, t].permute(0, 4, 1, 2, 3, 5, 6).to(acc).flatten(0, 1)


def _depth_slice(v: Tensor, t: int, sd: int, dd: int, do: int) -> Tensor:
    """The ``do`` depths that tap ``t`` reads: ``v[:, :, t * dd + z * sd]``."""
    return v[:, :, t * dd : t * dd + (do - 1) * sd + 1 : sd]


def depth_tap_sum(
    x: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int], in_place: bool = True
) -> Tensor:
    """The involution of ``x`` (N, C, D, H, W) with ``w``: (N, C, Do, Ho, Wo), in float32 for 16-bit inputs (a NDHWC
    view of the sum). Written with the 2-D op alone, so it is also the 3-D op's decomposition (ONNX export), which
    must be functional: ``in_place=False`` sums out of place."""
    sd, pd, dd = stride[0], padding[0], dilation[0]
    n, do = x.shape[0], w.shape[5]
    acc = _acc_dtype(x.dtype)
    padded = _padded(x, pd, acc)
    total = torch.empty(0)
    with _autocast_off(x):
        for t in range(w.shape[2]):
            # the tap's images are a temporary: the copy goes before the sum, which is done in place, so one output
            # less is alive at the peak
            y = involution2d_op(_images(_depth_slice(padded, t, sd, dd, do)), _tap_kernels(w, t, acc),
                                stride[1:], padding[1:], dilation[1:])
            total = y if t == 0 else total.add_(y) if in_place else total + y
    return _volumes(total, n)


def forward(x: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int], out: Tensor) -> None:
    """``out`` (N, C, Do, Ho, Wo), allocated by the op = the involution of ``x`` with ``w``, rounded once."""
    out.copy_(depth_tap_sum(x, w, stride, padding, dilation))


def backward_input(grad_output: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                   grad_input: Tensor) -> None:
    """``grad_input`` (N, C, D, H, W), allocated by the op = the input gradient for ``grad_output``."""
    sd, pd, dd = stride[0], padding[0], dilation[0]
    n, c, d, h, wd = grad_input.shape
    do = grad_output.shape[2]
    acc = _acc_dtype(grad_output.dtype)
    gy = _images(grad_output.to(acc))
    # the sums of the taps' gradients, over the padded depths; each tap's images land on its own depth slice
    sums = torch.zeros((n, c, d + 2 * pd, h, wd), dtype=acc, device=grad_output.device)
    with _autocast_off(grad_output):
        for t in range(w.shape[2]):
            g = _bwd_in2d(gy, _tap_kernels(w, t, acc), [n * do, c, h, wd], stride[1:], padding[1:], dilation[1:])
            _depth_slice(sums, t, sd, dd, do).add_(_volumes(g, n))
    grad_input.copy_(sums[:, :, pd : pd + d])


def backward_weight(grad_output: Tensor, x: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                    grad_weight: Tensor) -> None:
    """``grad_weight`` (N, G, Kd, Kh, Kw, Do, Ho, Wo), allocated by the op = the weight gradient."""
    sd, pd, dd = stride[0], padding[0], dilation[0]
    n, g, _, kh, kw, do, ho, wo = grad_weight.shape
    acc = _acc_dtype(x.dtype)
    padded = _padded(x, pd, acc)
    gy = _images(grad_output.to(acc))
    layout = gy.new_empty((n * do, g, kh, kw, ho, wo))  # the 2-D op reads only its shape
    with _autocast_off(x):
        for t in range(grad_weight.shape[2]):
            gw = _bwd_w2d(gy, _images(_depth_slice(padded, t, sd, dd, do)), layout, stride[1:], padding[1:],
                          dilation[1:])
            # (N*Do, G, Kh, Kw, Ho, Wo) -> (N, G, Kh, Kw, Do, Ho, Wo), rounded once into grad_weight's tap t
            grad_weight[:, :, t].copy_(gw.unflatten(0, (n, do)).permute(0, 2, 3, 4, 1, 5, 6))


def _autocast_off(t: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``t``'s device while the float32 taps run (it would round them again)."""
    if active_autocast_dtype(t) is None:
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)
