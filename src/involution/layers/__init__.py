"""Reusable ``nn.Module`` blocks built on the involution op."""

from .conv_norm_act import ConvNormAct
from .involution import Involution2d

__all__ = ["ConvNormAct", "Involution2d"]
