"""Involution over sequences (1-D) and volumes or clips (3-D), computed by the 2-D op's backends.

Both reduce to :func:`~involution.ops.involution2d`'s registered op, so every backend (``cpu``, ``torch``,
``triton``), its autograd (double backward included), autocast, fake tensors for ``torch.compile`` /
``torch.export``, and the ONNX lowering serve them too, and no kernel exists three times:

* 1-D is the 2-D op on a height-1 image: ``(N, C, L) -> (N, C, 1, L)`` and ``(N, G, K, Lo) -> (N, G, 1, K, 1,
  Lo)`` are views, so nothing is copied in either layout.
* 3-D sums the depth taps: for each tap ``kd`` the output depths ``z`` read input depth ``z * sd - pd + kd * dd``,
  so the depth axis joins the batch and one 2-D involution per (sample, tap) aggregates the ``Kh x Kw`` window of
  every output depth at once, reading the input (padded in depth once, channels-last) and the kernels in place.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ._library import involution2d_op
from ._shapes import active_autocast_dtype, autocast_dtype_of, op_arguments


def involution1d(
    input: Tensor,
    weight: Tensor,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
    dilation: int | tuple[int] = 1,
) -> Tensor:
    r"""Involution along a sequence: every output position aggregates its K-tap window with a kernel of its own.

    .. math::
        \text{out}[n, c, i] = \sum_u \text{weight}[n, c // (C/G), u, i] \, \text{input}[n, c, i s - p + u d]

    with zeros outside the sequence; the kernel is shared by the C/G channels of a group.

    Args:
        input: ``(N, C, L)``, float32/float64/bfloat16/float16, any strides.
        weight: ``(N, G, K, Lo)`` with ``C % G == 0``.
        stride, padding, dilation: ints, as for ``nn.Conv1d``.

    Returns:
        ``(N, C, Lo)``, ``Lo = floor((L + 2p - d(K-1) - 1) / s) + 1``.

    Raises:
        TypeError / ValueError naming the argument at fault, as :func:`~involution.ops.involution2d`.
    """
    stride_, padding_, dilation_, _ = op_arguments(input, weight, stride, padding, dilation, dims=1)
    # the sequence as the width of a height-1 image: the NCHW kernels run along W (about 3x faster than along H)
    out = involution2d_op(
        input.unsqueeze(2), weight.unsqueeze(2).unsqueeze(4), (1, *stride_), (0, *padding_), (1, *dilation_)
    )
    return out.squeeze(2)


def involution3d(
    input: Tensor,
    weight: Tensor,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    dilation: int | tuple[int, int, int] = 1,
) -> Tensor:
    r"""Involution over volumes or clips: every output voxel aggregates its ``Kd x Kh x Kw`` neighbourhood.

    .. math::
        \text{out}[n, c, z, i, j] = \sum_{t, u, v} \text{weight}[n, c // (C/G), t, u, v, z, i, j] \,
        \text{input}[n, c, z s_d - p_d + t d_d, i s_h - p_h + u d_h, j s_w - p_w + v d_w]

    with zeros outside the volume; the kernel is shared by the C/G channels of a group.

    Args:
        input: ``(N, C, D, H, W)``, float32/float64/bfloat16/float16; NCDHW or channels_last_3d (fastest: the
            2-D kernels read each depth slice in place).
        weight: ``(N, G, Kd, Kh, Kw, Do, Ho, Wo)`` with ``C % G == 0``, any strides.
        stride, padding, dilation: an int or a ``(d, h, w)`` triple, as for ``nn.Conv3d``.

    Returns:
        ``(N, C, Do, Ho, Wo)`` laid out like ``input`` (channels_last_3d stays so).

    Raises:
        TypeError / ValueError naming the argument at fault, as :func:`~involution.ops.involution2d`.
    """
    return _depth_taps(input, weight, *op_arguments(input, weight, stride, padding, dilation, dims=3))


def _depth_taps(
    x: Tensor, w: Tensor, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
    out_size: tuple[int, ...],
) -> Tensor:
    """The 3-D involution as a sum over depth taps of 2-D involutions (see the module docstring).

    Tap ``t`` is one 2-D involution of the ``N * Do`` images ``padded[n, :, z * sd + t * dd]`` with the kernels
    ``w[n, :, t, :, :, z]``. The images are gathered channels-last (a copy of the input per tap, one alive at a
    time; a view when N == 1); the kernels are a view when the generator's output is channels_last_3d.

    bfloat16/float16 (given, or chosen by autocast) are summed in float32 across all ``Kd * Kh * Kw`` taps and
    rounded once: the input is widened once (so autograd sums the taps' input gradients in float32 too), each tap's
    kernels as it is used, and each 2-D tap runs in float32 with autocast off.
    """
    (sd, *s2), (pd, *p2), (dd, *d2) = stride, padding, dilation
    n, c = x.shape[:2]
    do, ho, wo = out_size
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    out_dtype = autocast_dtype_of(x.dtype, active_autocast_dtype(x))
    acc_dtype = torch.float32 if out_dtype in (torch.bfloat16, torch.float16) else out_dtype
    # what autocast hands the op: both tensors rounded to its dtype (a no-op when autocast is off)
    x, w = x.to(out_dtype), w.to(out_dtype)
    padded = (F.pad(x, (0, 0, 0, 0, pd, pd)) if pd else x).to(acc_dtype, memory_format=torch.channels_last_3d)
    total = None
    with _autocast_off(x):
        for t in range(w.shape[2]):
            depths = padded[:, :, t * dd : t * dd + (do - 1) * sd + 1 : sd]  # (N, C, Do, H, W)
            images = depths.permute(0, 2, 3, 4, 1).flatten(0, 1).permute(0, 3, 1, 2)  # (N*Do, C, H, W), NHWC
            kernels = w[:, :, t].permute(0, 4, 1, 2, 3, 5, 6).to(acc_dtype).flatten(0, 1)  # (N*Do, G, Kh, Kw, ..)
            y = involution2d_op(images, kernels, tuple(s2), tuple(p2), tuple(d2))
            del images  # the gathered copy goes before the sum, which is done in place: one output less at the peak
            total = y if total is None else total.add_(y)
    # (N*Do, C, Ho, Wo) channels-last is (N, Do, Ho, Wo, C) in memory: a NDHWC view of (N, C, Do, Ho, Wo)
    out = total.permute(0, 2, 3, 1).unflatten(0, (n, do)).permute(0, 4, 1, 2, 3)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return out.to(out_dtype, memory_format=layout)


def _autocast_off(t: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``t``'s device while the float32 taps run (it would round them again)."""
    if active_autocast_dtype(t) is None:
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)
