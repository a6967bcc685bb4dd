"""The public functional form of the involution operator."""

from __future__ import annotations

from torch import Tensor

from ._library import involution2d_op
from ._shapes import IntOrPair, op_arguments


def involution2d(
    input: Tensor,
    weight: Tensor,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> Tensor:
    r"""Aggregate each pixel's neighbourhood with a kernel of its own (Li et al., CVPR 2021).

    .. math::
        \text{out}[n, c, i, j] = \sum_{u, v} \text{weight}[n, c // (C/G), u, v, i, j] \,
        \text{input}[n, c, i s - p + u d, j s - p + v d]

    with zeros outside the image. The kernel of a pixel is shared by the C/G channels of its group and there is no
    sum over channels. The kernel (normally generated from the input, see :class:`involution.Involution2d`) is
    given per output pixel.

    Args:
        input: ``(N, C, H, W)`` features; any layout (NCHW or channels_last), float32/float64/bfloat16/float16.
        weight: ``(N, G, Kh, Kw, Ho, Wo)`` kernels with ``C % G == 0``; any strides (a channels_last generator's
            output viewed as 6-D is read in place).
        stride, padding, dilation: an int or an ``(h, w)`` pair, as for a convolution.

    Returns:
        ``(N, C, Ho, Wo)`` with ``Ho = floor((H + 2p - d(Kh-1) - 1) / s) + 1`` (likewise ``Wo``), laid out like
        ``input``.

    Raises:
        TypeError / ValueError naming the argument at fault (dimensions, batch, groups, dtype, device, sizes).

    The kernels run by the backend chosen with :func:`involution.ops.use_backend` (default: fastest available).
    Under autocast, both tensors are cast to the autocast dtype.
    """
    stride_, padding_, dilation_, _ = op_arguments(input, weight, stride, padding, dilation, dims=2)
    return involution2d_op(input, weight, stride_, padding_, dilation_)
