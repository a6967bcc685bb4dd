"""Detectors on RedNet backbones (issue 6): torchvision's Faster R-CNN, Mask R-CNN and RetinaNet with the official
RedNet-50-FPN settings, convolution or involution neck and heads, and official mmdet checkpoint loading.

>>> from involution.models import create_model
>>> model = create_model("maskrcnn_rednet50_fpn", num_classes=80, neck="involution", head="involution")

Files: :mod:`.backbone` (RedNet body + FPN, freezing, backbone checkpoints), :mod:`.heads` (involution RPN and
mask heads, RetinaNet with labels 1..K), :mod:`.checkpoint` (mmdet key map), :mod:`.builders` (registry entries).
"""

from ..backbone_init import load_backbone_checkpoint
from .backbone import P6P7, RedNetFPN, build_rednet_body, freeze_batchnorm
from .builders import (
    CARDS,
    fasterrcnn_rednet50_fpn,
    maskrcnn_rednet50_fpn,
    rcnn_anchor_generator,
    retina_anchor_generator,
    retinanet_rednet50_fpn,
)
from .checkpoint import is_mmdet_layout, load_detector_checkpoint, mmdet_to_ours
from .heads import RedNetRetinaNet, mask_head, rpn_head

__all__ = [
    "CARDS",
    "P6P7",
    "RedNetFPN",
    "RedNetRetinaNet",
    "build_rednet_body",
    "fasterrcnn_rednet50_fpn",
    "freeze_batchnorm",
    "is_mmdet_layout",
    "load_backbone_checkpoint",
    "load_detector_checkpoint",
    "mask_head",
    "maskrcnn_rednet50_fpn",
    "mmdet_to_ours",
    "rcnn_anchor_generator",
    "retina_anchor_generator",
    "retinanet_rednet50_fpn",
    "rpn_head",
]
