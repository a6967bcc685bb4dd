"""Involution over sequences (1-D) and volumes or clips (3-D), computed by the 2-D op's backends.

Both reduce to :func:`~involution.ops.involution2d`'s registered op, so every backend (``cpu``, ``torch``,
``triton``), its autograd (double backward included), autocast, fake tensors for ``torch.compile`` /
``torch.export``, and the ONNX lowering serve them too, and no kernel exists three times:

* 1-D is the 2-D op on a height-1 image: ``(N, C, L) -> (N, C, 1, L)`` and ``(N, G, K, Lo) -> (N, G, 1, K, 1,
  Lo)`` are views, so nothing is copied in either layout.
* 3-D sums the depth taps: for each tap ``kd`` the output depths ``z`` read input depth ``z * sd - pd + kd * dd``,
  so the depth axis joins the batch and one 2-D involution per (sample, tap) aggregates the ``Kh x Kw`` window of
  every output depth at once, reading the input (padded in depth once, channels-last) and the kernels in place.

:func:`involution_nd` is the form graphs call (the layers under ``torch.fx`` and TorchScript): any of the three,
chosen by ``len(stride)``, with list arguments; the helpers below it are written so TorchScript compiles them.
"""

from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from ._library import involution2d_op
from ._shapes import active_autocast_dtype, autocast_dtype_of, op_arguments, output_size
from .involution2d import involution2d


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
    return _sequence_as_image(input, weight, stride_[0], padding_[0], dilation_[0])


def _sequence_as_image(x: Tensor, w: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """The 1-D involution as the 2-D op on a height-1 image (views only): ``(N, C, L) -> (N, C, Lo)``."""
    # the sequence as the width of a height-1 image: the NCHW kernels run along W (about 3x faster than along H)
    out = _op2d(x.unsqueeze(2), w.unsqueeze(2).unsqueeze(4), [1, stride], [0, padding], [1, dilation])
    return out.squeeze(2)


def _op2d(x: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """The registered 2-D op, unchecked: what the 1-D and 3-D forms hand their 2-D work to."""
    if torch.jit.is_scripting():
        return torch.ops.involution.involution2d(x, w, stride, padding, dilation)
    return involution2d_op(x, w, stride, padding, dilation)


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
    stride_, padding_, dilation_, out_size = op_arguments(input, weight, stride, padding, dilation, dims=3)
    return _depth_taps(input, weight, list(stride_), list(padding_), list(dilation_), list(out_size))


def involution_nd(input: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """:func:`involution1d`, :func:`~involution.ops.involution2d` or :func:`involution3d`, chosen by ``len(stride)``
    (1, 2 or 3), with the three arguments given as lists: the form the layers call under ``torch.fx`` and
    TorchScript.

    TorchScript compiles it (the 2-D op is called by its schema, ``torch.ops.involution.involution2d``); compiled,
    it runs without the argument checks, which are Python. ``torch.fx`` keeps it as one node (the layers register
    it with ``torch.fx.wrap``), and a traced graph run in Python calls the checked functions, so bad shapes get the
    same messages there as in the layers themselves.

    Shapes: ``input`` ``(N, C, *size)``, ``weight`` ``(N, G, *kernel_size, *out_size)``, output ``(N, C,
    *out_size)``, as for the function of that dimension.
    """
    dims = len(stride)
    if not torch.jit.is_scripting():
        op = involution1d if dims == 1 else involution3d if dims == 3 else involution2d
        return op(input, weight, tuple(stride), tuple(padding), tuple(dilation))
    if dims == 1:
        return _sequence_as_image(input, weight, stride[0], padding[0], dilation[0])
    if dims == 2:
        return torch.ops.involution.involution2d(input, weight, stride, padding, dilation)
    kernel_size = weight.shape[2:5]
    size = input.shape[2:]
    out_size = [output_size(size[i], kernel_size[i], stride[i], padding[i], dilation[i]) for i in range(3)]
    return _depth_taps(input, weight, stride, padding, dilation, out_size)


def _depth_taps(
    x: Tensor, w: Tensor, stride: List[int], padding: List[int], dilation: List[int], out_size: List[int]
) -> Tensor:
    """The 3-D involution as a sum over depth taps of 2-D involutions (see the module docstring).

    Tap ``t`` is one 2-D involution of the ``N * Do`` images ``padded[n, :, z * sd + t * dd]`` with the kernels
    ``w[n, :, t, :, :, z]``. The images are gathered channels-last (a copy of the input per tap, one alive at a
    time; a view when N == 1); the kernels are a view when the generator's output is channels_last_3d.

    bfloat16/float16 (given, or chosen by autocast) are summed in float32 across all ``Kd * Kh * Kw`` taps and
    rounded once: the input is widened once (so autograd sums the taps' input gradients in float32 too), each tap's
    kernels as it is used, and each 2-D tap runs in float32 with autocast off. Under TorchScript, whose autocast is
    its own, autocast is not looked at (16-bit inputs are still summed in float32).
    """
    sd, pd, dd = stride[0], padding[0], dilation[0]
    n, do = x.shape[0], out_size[0]
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    if torch.jit.is_scripting():
        out_dtype = x.dtype
    else:
        out_dtype = autocast_dtype_of(x.dtype, active_autocast_dtype(x))
    acc_dtype = torch.float32 if out_dtype == torch.bfloat16 or out_dtype == torch.float16 else out_dtype
    # what autocast hands the op: both tensors rounded to its dtype (a no-op when autocast is off)
    x, w = x.to(out_dtype), w.to(out_dtype)
    padded = F.pad(x, [0, 0, 0, 0, pd, pd]) if pd > 0 else x
    padded = padded.to(acc_dtype, memory_format=torch.channels_last_3d)
    if torch.jit.is_scripting():
        total = _sum_depth_taps(padded, w, sd, dd, do, stride[1:], padding[1:], dilation[1:], acc_dtype)
    else:
        with _autocast_off(x):
            total = _sum_depth_taps(padded, w, sd, dd, do, stride[1:], padding[1:], dilation[1:], acc_dtype)
    # (N*Do, C, Ho, Wo) channels-last is (N, Do, Ho, Wo, C) in memory: a NDHWC view of (N, C, Do, Ho, Wo)
    out = total.permute(0, 2, 3, 1).unflatten(0, (n, do)).permute(0, 4, 1, 2, 3)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return out.to(out_dtype, memory_format=layout)


def _sum_depth_taps(
    padded: Tensor, w: Tensor, sd: int, dd: int, do: int, s2: List[int], p2: List[int], d2: List[int],
    acc_dtype: torch.dtype,
) -> Tensor:
    """The sum over depth taps of :func:`_depth_taps`: ``padded`` the input padded in depth, channels_last_3d."""

    total = torch.empty(0)  # (TorchScript wants a tensor here; tap 0 replaces it)
    for t in range(w.shape[2]):
        depths = padded[:, :, t * dd : t * dd + (do - 1) * sd + 1 : sd]  # (N, C, Do, H, W)
        kernels = w[:, :, t].permute(0, 4, 1, 2, 3, 5, 6).to(acc_dtype).flatten(0, 1)  # (N*Do, G, Kh, Kw, ..)
        # the images (N*Do, C, H, W), gathered NHWC, are a temporary: the copy goes before the sum, which is done
        # in place, so one output less is alive at the peak
        y = _op2d(depths.permute(0, 2, 3, 4, 1).flatten(0, 1).permute(0, 3, 1, 2), kernels, s2, p2, d2)
        total = y if t == 0 else total.add_(y)
    return total


def _autocast_off(t: Tensor) -> contextlib.AbstractContextManager:
    """Autocast switched off for ``t``'s device while the float32 taps run (it would round them again)."""
    if active_autocast_dtype(t) is None:
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)
