"""Reusable ``nn.Module`` blocks built on the involution op."""

from .conv_norm_act import ConvNormAct
from .involution import Involution1d, Involution2d, Involution3d
from .spatial import SPATIAL_KINDS, LocalSelfAttention2d, StaticSharedConv2d, check_kernel_reach, spatial_layer

__all__ = [
    "SPATIAL_KINDS",
    "ConvNormAct",
    "Involution1d",
    "Involution2d",
    "Involution3d",
    "LocalSelfAttention2d",
    "StaticSharedConv2d",
    "check_kernel_reach",
    "spatial_layer",
]
