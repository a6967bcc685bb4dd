"""Spatial layers for the "which half of involution matters" study: a bottleneck's K x K layer, five ways.

Involution differs from a depthwise convolution in two ways: its kernel is *dynamic* (generated from each pixel)
and *shared* by the C/G channels of a group. Crossing the two gives four layers; local self-attention is a fifth,
a dynamic shared kernel computed another way (query-key products instead of a generator):

====================  ==========================  ===================================  =======================
kind                  kernel                      layer                                spatial parameters
====================  ==========================  ===================================  =======================
``depthwise``         static, per channel         :class:`torch.nn.Conv2d`, groups=C   C * K * K
``static_shared``     static, per group           :class:`StaticSharedConv2d`          G * K * K
``dynamic``           dynamic, per channel        :class:`Involution2d`, groups=C      generator to C * K * K
``involution``        dynamic, per group          :class:`Involution2d`                generator to G * K * K
``attention``         dynamic, per group (head)   :class:`LocalSelfAttention2d`        3 * C * C (q, k, v)
====================  ==========================  ===================================  =======================

with G = ``max(1, C // group_channels)``. Every layer maps ``(N, C, H, W) -> (N, C, ceil(H / s), ceil(W / s))``
(zero padding ``K // 2``; the window of output pixel ``(i, j)`` is centred on input pixel ``(i s, j s)``).
:func:`spatial_layer` builds any of them by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..ops.involution_nd import involution_nd
from .conv_norm_act import LayerFactory
from .involution import Involution1d, Involution2d, Involution3d
from .pool import CeilAvgPool2d

torch.fx.wrap("involution_nd")  # one node in a torch.fx graph (its argument checks are Python)

__all__ = ["SPATIAL_KINDS", "LocalSelfAttention2d", "StaticSharedConv2d", "check_kernel_reach", "spatial_layer"]

SPATIAL_KINDS = ("involution", "dynamic", "static_shared", "depthwise", "attention")


def _check_common(channels: int, kernel_size: int, stride: int, groups: int) -> None:
    for name, value in (("channels", channels), ("kernel_size", kernel_size), ("stride", stride), ("groups", groups)):
        check_int(name, value)  # the type; the ranges are checked below
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1 so the output keeps its size, got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"groups={groups} must be >= 1 and divide channels={channels}")


class StaticSharedConv2d(nn.Module):
    """A learned K x K kernel per group, shared by the group's C/G channels and by every pixel.

    The "static" counterpart of involution: the same sharing over channels, but one kernel for the whole image
    instead of one per pixel. The ``(G, K, K)`` weight is repeated to a depthwise ``(C, 1, K, K)`` kernel and run as
    a grouped convolution (fast everywhere, and its gradient sums over each group's channels by itself). No bias:
    in a bottleneck the normalisation that follows would cancel it.

    Args:
        channels: C.
        kernel_size: K (odd); padding ``K // 2`` keeps the size.
        stride: stride of the window centres.
        groups: G, which must divide C (G = C is a depthwise convolution, G = 1 one kernel for all channels).

    Parameters: ``weight`` ``(G, K, K)``, i.e. G * K * K values.

    Shapes: ``(N, C, H, W) -> (N, C, ceil(H / s), ceil(W / s))``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        _check_common(channels, kernel_size, stride, groups)
        self.channels, self.kernel_size, self.stride, self.groups = channels, kernel_size, stride, groups
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(groups, kernel_size, kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The default nn.Conv2d initialisation of a depthwise kernel (fan-in K * K), so this layer starts with
        # weights of the same scale as the depthwise layer it is compared with.
        nn.init.kaiming_uniform_(self.weight.unsqueeze(1), a=math.sqrt(5))

    def depthwise_weight(self) -> Tensor:
        """The equivalent depthwise kernel ``(C, 1, K, K)``: channel c uses group ``c // (C / G)``'s kernel."""
        return self.weight.repeat_interleave(self.channels // self.groups, dim=0).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # checked in eager mode (under torch.fx, x is a Proxy of unknown shape)
            if isinstance(x, Tensor) and (x.dim() != 4 or x.shape[1] != self.channels):
                raise ValueError(f"StaticSharedConv2d expects input (N, {self.channels}, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.depthwise_weight(), None, self.stride, self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}"


class LocalSelfAttention2d(nn.Module):
    """Multi-head self-attention within each pixel's K x K window, aggregated by the involution op.

    For output pixel p with window W(p) and head g (the C/G channels of group g, d = C / G of them)::

        a[g, u, p] = softmax over u in W(p) of  q[g, p] . k[g, u] / sqrt(d)      (padding taps excluded)
        out[c, p]  = sum over u in W(p) of  a[c // d, u, p] * v[c, u]

    The attention weights ``a`` are an involution kernel ``(N, G, K, K, Ho, Wo)``, shared by the d channels of a
    head, and the aggregation is :func:`involution.ops.involution2d` itself: local self-attention is the member of
    the involution family whose kernel generator is a softmax of query-key products.

    Design choices:

    * q, k and v are 1x1 convolutions C -> C without bias (a key bias only adds a constant to a window's logits,
      which the softmax removes; an output bias would be cancelled by the following normalisation). There is no
      output projection: in a bottleneck the 1x1 ``conv3`` that follows plays that part. There is no positional
      encoding either: the logits depend on content only, as in the brief's "q.k / sqrt(d)" (SASA adds relative
      embeddings).
    * Window taps that fall in the zero padding are masked to ``-inf`` before the softmax, so a border pixel's
      weights sum to 1 over the pixels that exist (the centre tap is always inside, so no row is empty).
    * Stride: the queries are computed from the input average-pooled by the stride (ceil mode), as involution's
      kernel generator does, and the keys and values are read at full resolution with the windows' centres
      ``s`` pixels apart (the stride is applied in the key unfold and in the aggregation).
    * The logits come from ``F.unfold`` of the keys, which materialises ``N * C * K * K * Ho * Wo`` values (K * K
      times the layer's activations, kept for the backward): fine for the small models of the study, too heavy
      for ImageNet-sized RedNets.

    Args:
        channels: C.
        kernel_size: K (odd); padding ``K // 2``.
        stride: stride of the window centres.
        heads: G, which must divide C.

    Parameters: 3 * C * C (``q``, ``k``, ``v`` weights).

    Shapes: ``(N, C, H, W) -> (N, C, ceil(H / s), ceil(W / s))``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, stride: int = 1, heads: int = 1) -> None:
        super().__init__()
        _check_common(channels, kernel_size, stride, heads)
        self.channels, self.kernel_size, self.stride, self.heads = channels, kernel_size, stride, heads
        self.head_channels = channels // heads
        self.padding = kernel_size // 2
        self.pool = CeilAvgPool2d((stride, stride)) if stride > 1 else nn.Identity()
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.k = nn.Conv2d(channels, channels, 1, bias=False)
        self.v = nn.Conv2d(channels, channels, 1, bias=False)

    def attention_weights(self, x: Tensor) -> Tensor:
        """The softmaxed attention of every output pixel over its window: ``(N, C, H, W) -> (N, G, K, K, Ho, Wo)``."""
        # sizes indexed one by one, not unpacked: under torch.fx they are Proxies
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        k, s, p, g, d = self.kernel_size, self.stride, self.padding, self.heads, self.head_channels
        query = self.q(self.pool(x))  # (N, C, Ho, Wo)
        ho, wo = query.shape[2], query.shape[3]
        keys = F.unfold(self.k(x), k, padding=p, stride=s)  # (N, C * K * K, Ho * Wo), channel-major
        logits = torch.einsum(
            "ngdl,ngdul->ngul", [query.reshape(n, g, d, ho * wo), keys.view(n, g, d, k * k, ho * wo)]
        ) / math.sqrt(d)
        # Which taps of each window lie inside the image: the unfold of an all-ones image (cheap: one channel).
        inside = F.unfold(x.new_ones([1, 1, h, w]), k, padding=p, stride=s).view(1, 1, k * k, ho * wo) > 0
        logits = logits.masked_fill(~inside, float("-inf"))
        return logits.softmax(dim=2).view(n, g, k, k, ho, wo)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # checked in eager mode (under torch.fx, x is a Proxy of unknown shape)
            if isinstance(x, Tensor) and (x.dim() != 4 or x.shape[1] != self.channels):
                raise ValueError(
                    f"LocalSelfAttention2d expects input (N, {self.channels}, H, W), got {tuple(x.shape)}"
                )
        s, p = self.stride, self.padding
        return involution_nd(self.v(x), self.attention_weights(x), [s, s], [p, p], [1, 1])

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, heads={self.heads}"


def spatial_layer(
    kind: str,
    channels: int,
    kernel_size: int,
    stride: int,
    group_channels: int,
    reduction_ratio: int,
    norm_layer: LayerFactory | None,
    recompute_kernel: bool,
    coord_channels: bool = False,
) -> nn.Module:
    """Build the K x K spatial layer called ``kind`` (one of :data:`SPATIAL_KINDS`).

    Args:
        kind: ``"involution"`` (default RedNet layer), ``"dynamic"``, ``"static_shared"``, ``"depthwise"`` or
            ``"attention"`` (see the module docstring's table).
        channels: C (input and output).
        kernel_size: K (odd).
        stride: stride of the window centres.
        group_channels: channels per group (or per attention head); G = ``max(1, C // group_channels)``. Not used
            by ``depthwise`` and ``dynamic``, whose kernels are per channel.
        reduction_ratio, norm_layer, recompute_kernel: of the involution kernel generator (``involution`` and
            ``dynamic`` only).
        coord_channels: give the kernel generator the pixel coordinates (see :class:`Involution2d`); only the
            generated kinds (``involution``, ``dynamic``) have a generator to give them to, so True with another
            kind is an error rather than silently ignored.

    Returns:
        A module mapping ``(N, C, H, W) -> (N, C, ceil(H / s), ceil(W / s))``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the allowed ones), or ``coord_channels`` with a kind that
            has no kernel generator.
    """
    if kind not in SPATIAL_KINDS:
        raise ValueError(f"spatial kind must be one of {', '.join(SPATIAL_KINDS)}; got {kind!r}")
    if coord_channels and kind not in ("involution", "dynamic"):
        raise ValueError(f"coord_channels=True needs a kernel generator: kind 'involution' or 'dynamic', not {kind!r}")
    groups = max(1, channels // check_int("group_channels", group_channels, low=1))
    if kind in ("involution", "dynamic"):
        return Involution2d(
            channels,
            kernel_size=kernel_size,
            stride=stride,
            group_channels=group_channels,
            # One group per channel turns the shared kernel into a channel-specific one: C * K * K values per pixel.
            groups=channels if kind == "dynamic" else None,
            reduction_ratio=reduction_ratio,
            norm_layer=norm_layer,
            recompute_kernel=recompute_kernel,
            coord_channels=coord_channels,
        )
    if kind == "depthwise":
        # No bias, like the other static kinds: the normalisation after the layer would cancel it.
        return nn.Conv2d(channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False)
    if kind == "static_shared":
        return StaticSharedConv2d(channels, kernel_size, stride, groups)
    return LocalSelfAttention2d(channels, kernel_size, stride, heads=groups)


_KERNEL_LAYERS = (Involution1d, Involution2d, Involution3d, StaticSharedConv2d, LocalSelfAttention2d)


def check_kernel_reach(model: nn.Module, size: Sequence[int]) -> None:
    """``ValueError`` when a K x K layer of ``model`` (involution, static shared, local attention) has a kernel
    wider than inputs of spatial ``size`` (e.g. ``(H, W)``) can ever fill.

    Each such layer pads by its kernel's reach ``dilation * (K - 1) // 2``, so a tap farther than ``size - 1``
    pixels from the centre reads zero padding at every output position: it is pure cost (``kernel_size=101`` on
    8x8 images makes a step take seconds for nothing). The maps of deeper layers are smaller than the input (a
    7x7 kernel on a stage's 1x1 map is how RedNets run on small images), so the bound is the input's: a kernel
    that overshoots the input overshoots every map. Layers of other dimensions than ``len(size)`` are skipped.
    """
    size = tuple(int(s) for s in size)
    for name, layer in model.named_modules():
        if not isinstance(layer, _KERNEL_LAYERS):
            continue
        dims = len(size)
        kernel, dilation = (tuple(v) if isinstance(v, tuple) else (v,) * dims
                            for v in (layer.kernel_size, getattr(layer, "dilation", 1)))
        if len(kernel) != dims:
            continue
        if any(d * (k - 1) // 2 >= s for k, d, s in zip(kernel, dilation, size)):
            widest = tuple(2 * ((s - 1) // d) + 1 for s, d in zip(size, dilation))
            shown = "x".join(map(str, size))
            raise ValueError(
                f"{name or type(layer).__name__}: a kernel of {'x'.join(map(str, kernel))} (dilation "
                f"{'x'.join(map(str, dilation))}) is wider than {shown} inputs can fill: its outer taps would read "
                f"only zero padding; use a kernel of at most {'x'.join(map(str, widest))} for {shown} inputs"
            )
