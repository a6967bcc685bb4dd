"""The FPN neck of mmseg's Semantic FPN (``neck.lateral_convs.i.conv``, ``neck.fpn_convs.i.conv``).

As configured for the official RedNet models: no normalisation and no activation in the neck (the convs carry
biases), nearest-neighbour top-down upsampling, as many outputs as inputs. ``neck="involution"`` replaces each
3x3 output conv by an :class:`~involution.layers.Involution2d` with K=7 (the official ``FPN_involution``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...layers import ConvNormAct, Involution2d
from ...layers.conv_norm_act import LayerFactory
from ._common import check_channels

NECK_KINDS = ("convolution", "involution")


def check_neck(neck: str) -> str:
    if neck not in NECK_KINDS:
        raise ValueError(f"neck must be one of {NECK_KINDS}, got {neck!r}")
    return neck


def output_layer(kind: str, channels: int, norm_layer: LayerFactory | None, involution_norm: LayerFactory) -> nn.Module:
    """The K x K layer after a lateral sum: a 3x3 ``ConvNormAct`` or a K=7 ``Involution2d`` (groups of 16)."""
    if kind == "involution":
        return Involution2d(channels, kernel_size=7, norm_layer=involution_norm)
    act = None if norm_layer is None else nn.ReLU
    return ConvNormAct(channels, channels, 3, padding=1, norm_layer=norm_layer, act_layer=act)


class FPN(nn.Module):
    """Feature pyramid: ``[(N, C_i, H_i, W_i)] -> [(N, out_channels, H_i, W_i)]`` for every input level.

    Args:
        in_channels: channels of the backbone levels (finest first), e.g. ``[256, 512, 1024, 2048]``.
        out_channels: channels of every output (official 256).
        neck: ``"convolution"`` (3x3 output convs) or ``"involution"`` (K=7 involutions).
        norm_layer: the norm of the kernel generators of the involutions (the official code uses BN there;
            the convolutions of the neck have none, as in the official config).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        neck: str = "convolution",
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.in_channels = [check_channels("in_channels", int(c)) for c in in_channels]
        self.out_channels = check_channels("out_channels", out_channels)
        self.kind = check_neck(neck)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm_layer=None, act_layer=None) for c in self.in_channels
        )
        self.fpn_convs = nn.ModuleList(
            output_layer(self.kind, out_channels, None, norm_layer) for _ in self.in_channels
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform convs with zero bias (the mmseg FPN init; it covers the involutions' convs too)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
