"""Heads of the detectors: torchvision's, with the official involution variants (``RPNHead_involution``,
``FCNMaskHead_involution``), and a RetinaNet that never outputs the unused label 0.

The involution variants keep torchvision's module paths, so state dicts differ only below the replaced layer:
``rpn.head.conv.0.0`` and ``roi_heads.mask_head.{i}.0`` are a ``Conv2d`` (convolution head) or an
:class:`~involution.layers.Involution2d` (involution head), each followed by a ReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.rpn import RPNHead

from ...layers import Involution2d

HEADS = ("convolution", "involution")


def _involution_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(Involution2d(channels, kernel_size=7), nn.ReLU(inplace=True))


def rpn_head(channels: int, num_anchors: int, head: str = "convolution") -> RPNHead:
    """torchvision's ``RPNHead``; with ``head="involution"`` its 3x3 conv is an ``Involution2d(channels, 7)`` + ReLU.

    Shapes: per level ``(N, channels, h, w) -> (N, A, h, w)`` objectness and ``(N, 4A, h, w)`` box deltas.
    """
    module = RPNHead(channels, num_anchors)
    if head == "involution":
        module.conv = nn.Sequential(_involution_relu(channels))
    return module


def mask_head(channels: int, head: str = "convolution", num_convs: int = 4) -> nn.Sequential:
    """The mask branch's four layers ``(R, channels, 14, 14) -> (R, channels, 14, 14)``.

    ``"convolution"``: torchvision's ``MaskRCNNHeads`` (3x3 conv + ReLU, width ``channels``, official 256);
    ``"involution"``: ``Involution2d(channels, 7)`` + ReLU each (official ``FCNMaskHead_involution``).
    """
    if head == "involution":
        return nn.Sequential(*[_involution_relu(channels) for _ in range(num_convs)])
    return MaskRCNNHeads(channels, [channels] * num_convs, 1)


class RedNetRetinaNet(RetinaNet):
    """torchvision's RetinaNet whose classifier has one channel per class plus an unused channel 0.

    Targets use labels 1..K as for the R-CNNs, so channel 0 only ever sees negatives; at inference it is masked
    out, so detections carry labels 1..K only.
    """

    def postprocess_detections(
        self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        masked = []
        for logits in head_outputs["cls_logits"]:
            logits = logits.clone()
            logits[..., 0] = -torch.inf
            masked.append(logits)
        return super().postprocess_detections({**head_outputs, "cls_logits": masked}, anchors, image_shapes)
