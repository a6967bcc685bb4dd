"""Involution over sequences (1-D) and volumes or clips (3-D).

* 1-D is the 2-D op (:func:`~involution.ops.involution2d`) on a height-1 image: ``(N, C, L) -> (N, C, 1, L)`` and
  ``(N, G, K, Lo) -> (N, G, 1, K, 1, Lo)`` are views, so nothing is copied in either layout, and every backend, its
  autograd, autocast, fake tensors and the ONNX lowering serve it too.
* 3-D is its own registered op, ``torch.ops.involution.involution3d`` (:mod:`._library3d`: autograd with double
  backward, autocast, fake tensors for ``torch.compile`` / ``torch.export``): native C++ kernels on the ``cpu``
  backend (NCDHW and NDHWC, no layout copy), sums of 2-D taps on the others (:mod:`._depth_taps`).

:func:`involution_nd` is the form graphs call (the layers under ``torch.fx`` and TorchScript): any of the three,
chosen by ``len(stride)``, with list arguments; the helpers below it are written so TorchScript compiles them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
from torch import Tensor

from ._library import involution2d_op
from ._library3d import involution3d_op
from ._shapes import op_arguments
from .involution2d import involution2d


def involution1d(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
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
    """The registered 2-D op, unchecked: what the 1-D form hands its work to."""
    if torch.jit.is_scripting():
        return torch.ops.involution.involution2d(x, w, stride, padding, dilation)
    return involution2d_op(x, w, stride, padding, dilation)


def involution3d(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    r"""Involution over volumes or clips: every output voxel aggregates its ``Kd x Kh x Kw`` neighbourhood.

    .. math::
        \text{out}[n, c, z, i, j] = \sum_{t, u, v} \text{weight}[n, c // (C/G), t, u, v, z, i, j] \,
        \text{input}[n, c, z s_d - p_d + t d_d, i s_h - p_h + u d_h, j s_w - p_w + v d_w]

    with zeros outside the volume; the kernel is shared by the C/G channels of a group.

    Args:
        input: ``(N, C, D, H, W)``, float32/float64/bfloat16/float16 (16-bit summed in float32, rounded once);
            NCDHW or channels_last_3d, read in place (any strides on the ``cpu`` backend).
        weight: ``(N, G, Kd, Kh, Kw, Do, Ho, Wo)`` with ``C % G == 0``, any strides (the view of a channels_last_3d
            generator output ``(N, G*Kd*Kh*Kw, Do, Ho, Wo)`` is read in place).
        stride, padding, dilation: an int or a ``(d, h, w)`` triple, as for ``nn.Conv3d``.

    Returns:
        ``(N, C, Do, Ho, Wo)`` laid out like ``input`` (channels_last_3d stays so).

    Raises:
        TypeError / ValueError naming the argument at fault, as :func:`~involution.ops.involution2d`.
    """
    stride_, padding_, dilation_, _ = op_arguments(input, weight, stride, padding, dilation, dims=3)
    return involution3d_op(input, weight, stride_, padding_, dilation_)


def involution_nd(input: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """:func:`involution1d`, :func:`~involution.ops.involution2d` or :func:`involution3d`, chosen by ``len(stride)``
    (1, 2 or 3), with the three arguments given as lists: the form the layers call under ``torch.fx`` and
    TorchScript.

    TorchScript compiles it (the 2-D and 3-D ops are called by their schemas, ``torch.ops.involution.*``); compiled,
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
    return torch.ops.involution.involution3d(input, weight, stride, padding, dilation)
