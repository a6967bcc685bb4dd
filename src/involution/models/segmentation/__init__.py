"""Semantic segmentation models on RedNet backbones (issue 6): Semantic FPN and UPerNet, mmseg module names.

>>> from involution.models import create_model
>>> model = create_model("upernet_rednet50", num_classes=19)
>>> model.train()(images)        # {"out": (N, 19, H, W), "aux": (N, 19, H, W)}   # doctest: +SKIP
"""

from .builders import build_backbone, fpn_rednet50, upernet_rednet50
from .fpn_neck import FPN, NECK_KINDS
from .heads import PPM, DecodeHead, FCNHead, FPNHead, UPerHead
from .segmentor import Segmentor

__all__ = [
    "FPN",
    "NECK_KINDS",
    "PPM",
    "DecodeHead",
    "FCNHead",
    "FPNHead",
    "Segmentor",
    "UPerHead",
    "build_backbone",
    "fpn_rednet50",
    "upernet_rednet50",
]
