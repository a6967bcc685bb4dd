"""Decode heads with mmseg's module names: ``FPNHead`` (Semantic FPN), ``UPerHead``, ``FCNHead`` (auxiliary).

Every head ends in ``dropout`` (``Dropout2d``) and ``conv_seg`` (1x1 conv to the class logits), as mmseg's
``BaseDecodeHead``; the logits come out at the resolution of the finest input level (stride 4 for FPN/UPerNet,
the input level's for FCN). The segmentor resizes them to the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...layers import ConvNormAct
from ...layers.conv_norm_act import LayerFactory
from ._common import Upsample2x, check_channels, kaiming_init_convs, resize
from .fpn_neck import check_neck, output_layer


class DecodeHead(nn.Module):
    """What every head shares: ``channels`` features -> ``dropout`` -> ``conv_seg`` -> ``(N, num_classes, h, w)``.

    Args:
        channels: width of the head's features (the input of ``conv_seg``).
        num_classes: output logits per pixel.
        dropout_ratio: of the ``Dropout2d`` before ``conv_seg`` (official 0.1; 0 leaves it out).
        align_corners: of every bilinear resize in the head.
    """

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float = 0.1, align_corners: bool = False):
        super().__init__()
        self.channels = check_channels("channels", channels)
        self.num_classes = check_channels("num_classes", num_classes)
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio}")
        self.align_corners = bool(align_corners)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def init_weights(self) -> None:
        """mmcv ConvModule init for the body; ``conv_seg`` normal(0, 0.01) with zero bias (mmseg)."""
        kaiming_init_convs(self)
        self.init_classifier()

    def init_classifier(self) -> None:
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        assert self.conv_seg.bias is not None  # built with one
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(x))


class FPNHead(DecodeHead):
    """Semantic FPN head (Kirillov et al. 2019): ``[(N, C_i, H/s_i, W/s_i)] -> (N, num_classes, H/s_0, W/s_0)``.

    ``scale_heads[i]`` is ``max(1, log2(s_i / s_0))`` times [3x3 ConvNormAct to ``channels``, then a 2x bilinear
    upsampling unless ``s_i == s_0``]; the levels are resized to the finest one, summed, and classified.

    Args:
        in_channels: channels of the input levels, e.g. ``[256] * 4``.
        feature_strides: their strides, finest first (powers of 2), e.g. ``[4, 8, 16, 32]``.
        channels: of the scale heads (official 128).
        num_classes, dropout_ratio, align_corners: see :class:`DecodeHead`.
        norm_layer: of the scale heads' convs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feature_strides: Sequence[int],
        channels: int = 128,
        num_classes: int = 19,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        self.in_channels = [int(c) for c in in_channels]
        self.feature_strides = [int(s) for s in feature_strides]
        if len(self.in_channels) != len(self.feature_strides) or not self.in_channels:
            raise ValueError(f"in_channels {self.in_channels} and feature_strides {self.feature_strides} must pair up")
        if min(self.feature_strides) != self.feature_strides[0]:
            raise ValueError(f"feature_strides must start with the finest level, got {self.feature_strides}")
        self.scale_heads = nn.ModuleList()
        for c_in, stride in zip(self.in_channels, self.feature_strides):
            steps = max(1, int(math.log2(stride) - math.log2(self.feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvNormAct(c_in if k == 0 else channels, channels, 3, padding=1, norm_layer=norm_layer))
                if stride != self.feature_strides[0]:
                    layers.append(Upsample2x(align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.init_weights()

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if len(inputs) != len(self.scale_heads):
            raise ValueError(f"FPNHead expects {len(self.scale_heads)} feature maps, got {len(inputs)}")
        out = self.scale_heads[0](inputs[0])
        size = out.shape[-2:]
        for head, x in zip(self.scale_heads[1:], inputs[1:]):
            out = out + resize(head(x), size, self.align_corners)  # odd sizes: 2x upsampling overshoots by 1
        return self.cls_seg(out)


class PPM(nn.ModuleList):
    """Pyramid pooling (PSPNet): for each scale, ``AdaptiveAvgPool2d(scale)`` then a 1x1 ConvNormAct, resized back.

    ``(N, in_channels, h, w) -> [(N, channels, h, w)] * len(pool_scales)``; child ``i`` is ``(pool, ConvNormAct)``
    so the keys are mmseg's ``psp_modules.i.1.conv``/``.bn``.
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_channels: int,
        channels: int,
        norm_layer: LayerFactory,
        align_corners: bool = False,
    ) -> None:
        scales = tuple(int(s) for s in pool_scales)
        if not scales or min(scales) < 1:
            raise ValueError(f"pool_scales must be positive ints, got {pool_scales!r}")
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1, norm_layer=norm_layer))
            for s in scales
        )
        self.pool_scales = scales
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> list[Tensor]:
        return [resize(branch(x), x.shape[-2:], self.align_corners) for branch in self]


class UPerHead(DecodeHead):
    """UPerNet head (Xiao et al. 2018): PPM on the coarsest level, FPN over the others, fused at the finest.

    ``[(N, C_i, H/s_i, W/s_i)] -> (N, num_classes, H/s_0, W/s_0)``. Modules (mmseg names): ``psp_modules``
    (:class:`PPM`), ``bottleneck`` (3x3 over the coarsest level and the PPM outputs), ``lateral_convs`` (1x1) and
    ``fpn_convs`` (3x3) for every level but the coarsest, ``fpn_bottleneck`` (3x3 over all levels concatenated).

    Args:
        in_channels: backbone channels, finest first, e.g. ``[256, 512, 1024, 2048]``.
        channels: of every inner map (official 512).
        pool_scales: of the PPM (official ``(1, 2, 3, 6)``).
        fpn_layer: ``"convolution"`` (official) or ``"involution"`` (``fpn_convs`` become K=7 involutions;
            not an official configuration).
        num_classes, dropout_ratio, align_corners: see :class:`DecodeHead`.
        norm_layer: of every ConvNormAct.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        num_classes: int = 19,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        fpn_layer: str = "convolution",
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        self.in_channels = [int(c) for c in in_channels]
        if len(self.in_channels) < 2:
            raise ValueError(f"UPerHead needs at least 2 levels, got in_channels {self.in_channels}")
        self.fpn_layer = check_neck(fpn_layer)
        top = self.in_channels[-1]
        self.psp_modules = PPM(pool_scales, top, channels, norm_layer, align_corners)
        self.bottleneck = ConvNormAct(
            top + len(self.psp_modules) * channels, channels, 3, padding=1, norm_layer=norm_layer
        )
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, channels, 1, norm_layer=norm_layer) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            output_layer(self.fpn_layer, channels, norm_layer, norm_layer) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = ConvNormAct(
            len(self.in_channels) * channels, channels, 3, padding=1, norm_layer=norm_layer
        )
        self.init_weights()

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"UPerHead expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        top = inputs[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = torch.cat([outs[0]] + [resize(o, size, self.align_corners) for o in outs[1:]], dim=1)
        return self.cls_seg(self.fpn_bottleneck(fused))


class FCNHead(DecodeHead):
    """FCN head (the auxiliary head of UPerNet): ``num_convs`` 3x3 ConvNormActs (``convs.j``), dropout, conv_seg.

    ``(N, in_channels, h, w) -> (N, num_classes, h, w)``. As configured officially: ``concat_input=False``.

    Args:
        in_channels: of the input map (official: C4, 1024).
        channels: of the convs (official 256).
        num_convs: official 1.
        num_classes, dropout_ratio, align_corners, norm_layer: as for the other heads.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        num_convs: int = 1,
        num_classes: int = 19,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__(channels, num_classes, dropout_ratio, align_corners)
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_channels = check_channels("in_channels", in_channels)
        self.convs = nn.Sequential(
            *(
                ConvNormAct(in_channels if j == 0 else channels, channels, 3, padding=1, norm_layer=norm_layer)
                for j in range(num_convs)
            )
        )
        self.init_weights()

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_seg(self.convs(x))
