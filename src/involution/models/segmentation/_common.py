"""Small pieces the segmentation neck and heads share: resizing, init, normalisation names."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...layers.conv_norm_act import NORM_LAYERS, LayerFactory


def norm_name(norm_layer: str | LayerFactory) -> str | LayerFactory:
    """The registry name of a known norm factory (``nn.BatchNorm2d`` -> ``"bn"``), else the factory itself."""
    for name, cls in NORM_LAYERS.items():
        if norm_layer is cls:
            return name
    return norm_layer


def resize(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``(N, C, *size)``; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class Upsample2x(nn.Module):
    """Bilinear upsampling by 2 (mmseg's ``Upsample(scale_factor=2)``); parameter-free, a placeholder in the
    ``Sequential`` of a scale head so that the conv indices (and so the checkpoint keys) are mmseg's."""

    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"align_corners={self.align_corners}"


def kaiming_init_convs(module: nn.Module) -> None:
    """mmcv ``ConvModule`` init: Kaiming-normal (fan_out, relu) convs, zero bias; norms weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_channels(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
