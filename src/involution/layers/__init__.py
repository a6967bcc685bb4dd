"""Reusable ``nn.Module`` blocks built on the involution op."""

from .conv_norm_act import ConvNormAct
from .involution import Involution1d, Involution2d, Involution3d
from .spatial import SPATIAL_KINDS, LocalSelfAttention2d, StaticSharedConv2d, spatial_layer

__all__ = [
    "ConvNormAct",
    "Involution1d",
    "Involution2d",
    "Involution3d",
    "LocalSelfAttention2d",
    "SPATIAL_KINDS",
    "StaticSharedConv2d",
    "spatial_layer",
]
