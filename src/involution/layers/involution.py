"""The involution layer of Li et al. (CVPR 2021): a kernel generator followed by the involution op, in 1, 2 and 3
spatial dimensions (:class:`Involution1d` for sequences, :class:`Involution2d`, :class:`Involution3d` for volumes
and clips), one implementation for all three.

The layers trace with ``torch.fx`` (the op, :func:`~involution.ops.involution_nd.involution_nd`, and
:func:`coordinate_channels` are single nodes) and compile with ``torch.jit.script``. A traced or scripted layer
checks no input shape (the shapes are not known while tracing; the op still checks them when the graph runs in
Python) and does not recompute its kernels in the backward (it stores them, as ``recompute_kernel=False`` does):
results are the same.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the traced graph's code,
# and TorchScript cannot read them back as strings.
import math
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._checks import check_flag, check_int
from ..ops import SPATIAL_NAMES, IntOrPair, involution1d, involution2d, involution3d, is_channels_last, ntuple
from ..ops.involution_nd import involution_nd
from .conv_norm_act import BATCH_NORM, CONVS, ConvNormAct, LayerFactory, resolve_norm
from .pool import CeilAvgPool, CeilAvgPool2d

_OPS = {1: involution1d, 2: involution2d, 3: involution3d}
# One node in a torch.fx graph, wherever these layers are traced (its argument checks are Python).
torch.fx.wrap("involution_nd")


class _InvolutionNd(nn.Module):
    """The layer for ``dims`` spatial dimensions; :class:`Involution2d` documents it."""

    dims = 2

    def __init__(
        self,
        channels: int,
        kernel_size: IntOrPair = 7,
        stride: IntOrPair = 1,
        dilation: IntOrPair = 1,
        group_channels: int = 16,
        groups: int | None = None,
        reduction_ratio: int = 4,
        out_channels: int | None = None,
        norm_layer: LayerFactory | str | None = BATCH_NORM,
        act_layer: LayerFactory | None = nn.ReLU,
        recompute_kernel: bool = True,
        coord_channels: bool = False,
    ) -> None:
        super().__init__()
        self.recompute_kernel = check_flag("recompute_kernel", recompute_kernel)
        self.coord_channels = check_flag("coord_channels", coord_channels)
        if coord_channels and self.dims != 2:
            raise ValueError(f"coord_channels is offered by Involution2d only, not {type(self).__name__}")
        for name, value in (("channels", channels), ("reduction_ratio", reduction_ratio),
                            ("group_channels", group_channels), ("groups", groups), ("out_channels", out_channels)):
            if value is not None:
                check_int(name, value)  # the type; the ranges are checked below
        dims = self.dims
        self.kernel_size = ntuple(kernel_size, dims, "kernel_size")
        self.stride = ntuple(stride, dims, "stride")
        self.dilation = ntuple(dilation, dims, "dilation")
        self.groups = _check_sizes(channels, self.kernel_size, self.stride, self.dilation, reduction_ratio,
                                   group_channels, groups)
        self.channels = channels
        self.padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        # the same as lists, as torch.fx graphs and TorchScript hand them to the op (a tuple's length is its type)
        self._op_args = [list(self.stride), list(self.padding), list(self.dilation)]
        self._kernel_shape = [self.groups, *self.kernel_size]  # (G, *kernel_size), what conv2's channels hold
        hidden = max(1, channels // reduction_ratio)
        norm_layer = None if norm_layer is None else resolve_norm(norm_layer, dims)

        self.avgpool = _pool(self.stride) if max(self.stride) > 1 else nn.Identity()
        # The hidden width stays C // r with coordinates too, so coord_channels only adds 2 * hidden weights.
        gen_in = channels + 2 if coord_channels else channels
        self.conv1 = ConvNormAct(gen_in, hidden, 1, norm_layer=norm_layer, act_layer=act_layer, dims=dims)
        self.conv2 = ConvNormAct(
            hidden, self.groups * math.prod(self.kernel_size), 1, bias=True, norm_layer=None, act_layer=None, dims=dims
        )
        self.out_channels = out_channels or channels
        self.proj = (
            CONVS[dims](channels, self.out_channels, 1, bias=False) if self.out_channels != channels else nn.Identity()
        )

    def generate_kernel(self, x: Tensor) -> Tensor:
        """The kernels this layer applies to ``x``: ``(N, C, *size) -> (N, G, *kernel_size, *out_size)``.

        Useful for visualisation; no copy is made (a channels_last generator output is viewed in place).
        """
        return self._kernel_from_hidden(self.conv1(self._generator_input(x)))

    def _generator_input(self, x: Tensor) -> Tensor:
        """What ``conv1`` sees: the input pooled by the stride, plus the coordinate channels if asked for."""
        pooled = self.avgpool(x)
        if not self.coord_channels:
            return pooled
        return torch.cat([pooled, coordinate_channels(pooled)], dim=1)

    def _kernel_from_hidden(self, hidden: Tensor) -> Tensor:
        return self.conv2(hidden).unflatten(1, self._kernel_shape)

    def _aggregate(self, x: Tensor, hidden: Tensor) -> Tensor:
        return _OPS[self.dims](x, self._kernel_from_hidden(hidden), self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not isinstance(x, Tensor):
            # TorchScript, or torch.fx tracing (x is a Proxy): the sizes are unknown here, so nothing is checked
            # (the op checks in a graph run in Python) and the kernels are stored, not recomputed
            hidden = self.conv1(self._generator_input(x))
            args = self._op_args
            out = involution_nd(x, self._kernel_from_hidden(hidden), args[0], args[1], args[2])
        else:
            if x.dim() != 2 + self.dims or x.shape[1] != self.channels:
                layout = ", ".join(SPATIAL_NAMES[self.dims])
                raise ValueError(
                    f"{type(self).__name__} expects input (N, {self.channels}, {layout}), got {tuple(x.shape)}"
                )
            hidden = self.conv1(self._generator_input(x))
            if self.recompute_kernel and torch.is_grad_enabled() and (x.requires_grad or hidden.requires_grad):
                out = checkpoint(self._aggregate, x, hidden, use_reentrant=False)
            else:
                out = self._aggregate(x, hidden)
        return self.proj(out)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
            f"groups={self.groups}" + (", coord_channels=True" if self.coord_channels else "")
        )


def _check_sizes(
    channels: int, kernel_size: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
    reduction_ratio: int, group_channels: int, groups: int | None,
) -> int:
    """Validate the layer's sizes; return the group count."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"kernel_size must be odd and >= 1 so the output keeps its size, got {kernel_size}")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be >= 1, got stride {stride}, dilation {dilation}")
    if reduction_ratio < 1:
        raise ValueError(f"reduction_ratio must be >= 1, got {reduction_ratio}")
    if groups is None:
        if group_channels < 1:
            raise ValueError(f"group_channels must be >= 1, got {group_channels}")
        groups = max(1, channels // group_channels)
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"groups={groups} must be >= 1 and divide channels={channels}")
    return groups


def _pool(stride: tuple[int, ...]) -> nn.Module:
    return CeilAvgPool2d(stride) if len(stride) == 2 else CeilAvgPool(stride)


class Involution2d(_InvolutionNd):
    """Involution: every output pixel aggregates its K x K neighbourhood with a kernel generated from that pixel.

    The kernel generator is ``conv1`` (1x1, C -> C/r, no bias) + norm + activation, then ``conv2`` (1x1,
    C/r -> G*Kh*Kw, with bias). With ``stride > 1`` the generator sees the input average-pooled by the stride
    (``ceil_mode=True``, so odd sizes work and even sizes equal the official pooling). Each kernel is shared by the
    C/G channels of its group. Submodule names follow the official code (``conv1.conv``, ``conv1.bn``,
    ``conv2.conv``), so its checkpoints load as they are.

    Args:
        channels: input channels C.
        kernel_size: K, an odd int or an odd ``(Kh, Kw)`` pair. Default 7.
        stride: aggregation stride (int or pair). Default 1.
        dilation: tap spacing (int or pair). Default 1. Padding keeps the size: ``dilation * (K - 1) // 2``.
        group_channels: channels per group (paper: 16); the group count is ``max(1, C // group_channels)``.
        groups: the group count G instead (must divide C); overrides ``group_channels``.
        reduction_ratio: r, the generator's channel reduction (hidden width ``max(1, C // r)``). Default 4.
        out_channels: if given and different from C, a 1x1 projection follows the aggregation.
        norm_layer, act_layer: the generator's normalisation and activation factories (default: the BatchNorm of
            the layer's dimension, ``nn.BatchNorm2d`` here, and ReLU).
        recompute_kernel: when taking gradients, keep only the generator's hidden features and regenerate the
            kernels (``conv2`` + aggregation) in the backward pass instead of storing them. The kernels hold G*Kh*Kw
            values per pixel (about 3x the layer's channels at the paper's defaults), so this is what makes a RedNet
            train in less memory than a ResNet; it costs one extra 1x1 convolution and aggregation per layer in the
            backward. Default True; results are identical either way.
        coord_channels: feed the kernel generator two extra input channels holding each (pooled) pixel's
            normalised ``(y, x)`` coordinates in ``[-1, 1]``, so the generated kernel may depend on position as
            well as on content (``conv1`` then takes C + 2 channels). Computed on the fly for any size. Default
            False: the official, translation-equivariant layer.

    Shapes: ``(N, C, H, W) -> (N, out_channels or C, ceil(H / s), ceil(W / s))``.

    Example::

        >>> layer = Involution2d(64, kernel_size=7, stride=2)
        >>> layer(torch.randn(2, 64, 15, 15)).shape
        torch.Size([2, 64, 8, 8])
        >>> layer.generate_kernel(torch.randn(2, 64, 15, 15)).shape   # (N, G, Kh, Kw, Ho, Wo)
        torch.Size([2, 4, 7, 7, 8, 8])
    """

    dims = 2


class Involution1d(_InvolutionNd):
    """Involution along sequences: each position aggregates its K-tap window with a kernel generated from it.

    :class:`Involution2d`'s layer with one spatial dimension: the same options (``kernel_size`` default 7,
    ``stride`` by ceil-mode average pooling in the generator, ``dilation``, ``groups`` / ``group_channels``,
    ``reduction_ratio``, ``out_channels``, ``norm_layer`` (default ``nn.BatchNorm1d``), ``act_layer``,
    ``recompute_kernel``, :meth:`generate_kernel`), no ``coord_channels``.

    Shapes: ``(N, C, L) -> (N, out_channels or C, ceil(L / s))``; kernels ``(N, G, K, Lo)``.

    Example::

        >>> Involution1d(64, kernel_size=7, stride=2)(torch.randn(2, 64, 101)).shape
        torch.Size([2, 64, 51])
    """

    dims = 1


class Involution3d(_InvolutionNd):
    """Involution over volumes and clips: each voxel aggregates its ``Kd x Kh x Kw`` neighbourhood with a kernel
    generated from it.

    :class:`Involution2d`'s layer with three spatial dimensions: the same options (``kernel_size`` an int or a
    ``(Kd, Kh, Kw)`` triple, default 3; ``stride`` / ``dilation`` ints or triples; ``norm_layer`` default
    ``nn.BatchNorm3d``), no ``coord_channels``. Fastest in channels_last_3d.

    Shapes: ``(N, C, D, H, W) -> (N, out_channels or C, ceil(D / sd), ceil(H / sh), ceil(W / sw))``; kernels
    ``(N, G, Kd, Kh, Kw, Do, Ho, Wo)``.

    Example::

        >>> Involution3d(32, kernel_size=3, stride=(1, 2, 2))(torch.randn(2, 32, 8, 15, 15)).shape
        torch.Size([2, 32, 8, 8, 8])
    """

    dims = 3

    def __init__(self, channels: int, kernel_size: int | tuple[int, int, int] = 3, *args: Any, **kwargs: Any) -> None:
        super().__init__(channels, kernel_size, *args, **kwargs)


@torch.fx.wrap  # one node in a traced graph: its grid's size is the input's
def coordinate_channels(x: Tensor) -> Tensor:
    """Normalised pixel coordinates for ``x`` ``(N, C, H, W)``: ``(N, 2, H, W)``, channel 0 the row ``y`` and
    channel 1 the column ``x``, each running linearly from -1 (first pixel) to 1 (last); 0 for a size of 1.

    Built in ``x``'s dtype, device and memory layout, so concatenating it to ``x`` costs no layout change.
    """
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    ys, xs = torch.meshgrid([_axis(h, x), _axis(w, x)], indexing="ij")
    grid = torch.stack([ys, xs]).unsqueeze(0).expand(n, 2, h, w)
    if x.dim() == 4 and is_channels_last(x):  # the op's own rule for NHWC
        return grid.contiguous(memory_format=torch.channels_last)
    return grid.contiguous()


def _axis(size: int, like: Tensor) -> Tensor:
    """``size`` coordinates from -1 to 1 in ``like``'s dtype and device."""
    if size == 1:  # linspace would give -1; the centre of a 1-pixel axis is 0
        return torch.zeros(1, dtype=like.dtype, device=like.device)
    return torch.linspace(-1.0, 1.0, size, dtype=like.dtype, device=like.device)
