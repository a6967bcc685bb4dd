"""Registered detectors: Faster R-CNN, Mask R-CNN and RetinaNet on a RedNet-50 FPN backbone (torchvision models).

>>> from involution.models import create_model
>>> model = create_model("fasterrcnn_rednet50_fpn", num_classes=80, neck="involution")
>>> tiny = create_model("retinanet_rednet50_fpn", num_classes=3, backbone_kwargs={"width": 0.125},
...                     fpn_channels=32, min_size=64, max_size=64)

Classes: ``num_classes`` counts object classes only (COCO: 80). Targets use labels ``1..K`` and detections carry
labels ``1..K``; the builders add the background class internally (torchvision's classifiers get ``K + 1``
outputs, background first; for RetinaNet channel 0 is simply a class that never occurs in the targets, and it is
masked out at inference).

Inputs are what torchvision's detectors take: a list of ``(3, H, W)`` RGB float images in 0..1 (and in training a
list of target dicts with ``boxes`` ``(n, 4)`` xyxy pixels, ``labels`` ``(n,)`` int64 in 1..K, for Mask R-CNN
``masks`` ``(n, H, W)`` uint8). Images are normalised with the ImageNet mean/std of the official mmdet configs and
resized so the shorter side is ``min_size`` (longer side at most ``max_size``); outputs are in input pixels.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead

from ..backbone_init import load_backbone_checkpoint
from ..registry import IMAGENET_MEAN, IMAGENET_STD, build_model, channel_stats, register_model
from .backbone import (
    NECKS,
    RedNetFPN,
    build_rednet_body,
    check_choice,
    freeze_batchnorm,
)
from .checkpoint import load_detector_checkpoint
from .heads import HEADS, RedNetRetinaNet, mask_head, rpn_head

FPN_SIZES = (32, 64, 128, 256, 512)

# Official model zoo (README of d-li14/involution, COCO val2017, 1x schedule): params (M), GFLOPs, box AP, mask AP.
CARDS: dict[tuple[str, str, str], tuple[float, float, float, float | None]] = {
    ("fasterrcnn", "convolution", "convolution"): (31.6, 177.9, 39.5, None),
    ("fasterrcnn", "involution", "convolution"): (29.5, 135.0, 40.2, None),
    ("fasterrcnn", "involution", "involution"): (29.0, 91.5, 39.2, None),
    ("maskrcnn", "convolution", "convolution"): (34.2, 224.2, 39.9, 35.7),
    ("maskrcnn", "involution", "convolution"): (32.2, 181.3, 40.8, 36.4),
    ("maskrcnn", "involution", "involution"): (29.5, 104.6, 39.6, 35.1),
    ("retinanet", "convolution", "convolution"): (27.8, 210.1, 38.2, None),
    ("retinanet", "involution", "convolution"): (26.3, 199.9, 38.2, None),
}


def rcnn_anchor_generator() -> AnchorGenerator:
    """One size per level (32..512 at strides 4..64), ratios 0.5/1/2: mmdet ``scales=[8]`` x stride."""
    return AnchorGenerator(tuple((s,) for s in FPN_SIZES), ((0.5, 1.0, 2.0),) * len(FPN_SIZES))


def retina_anchor_generator() -> AnchorGenerator:
    """Three scales per octave (``4 * stride * 2**(i/3)``, strides 8..128) x ratios 0.5/1/2: 9 anchors per pixel."""
    sizes = tuple(tuple(s * 2 ** (i / 3) for i in range(3)) for s in FPN_SIZES)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(FPN_SIZES))


# The arguments every detector entry point takes besides the checkpoints, with their defaults; the rest go to the
# torchvision detector class.
_ARGS: dict[str, Any] = {
    "num_classes": 80,
    "neck": "convolution",
    "head": "convolution",
    "frozen_stages": 1,
    "norm_eval": True,
    "backbone_kwargs": None,
    "fpn_channels": 256,
    "min_size": 800,
    "max_size": 1333,
    "in_chans": 3,
}


def _check_args(kind: str, args: dict[str, Any]) -> None:
    num_classes, frozen_stages, fpn_channels = args["num_classes"], args["frozen_stages"], args["fpn_channels"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be an int >= 1 counting object classes only (COCO: 80; the background class is added "
            f"internally), got {num_classes!r}"
        )
    if args["in_chans"] < 1:
        raise ValueError(f"in_chans must be >= 1, got {args['in_chans']}")
    if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
        raise ValueError(
            f"frozen_stages must be an int in -1..4 (-1: none, 0: stem, k: stem + layer1..k), got {frozen_stages!r}"
        )
    if not isinstance(fpn_channels, int) or fpn_channels < 16:
        raise ValueError(
            f"fpn_channels must be an int >= 16 (one involution group has 16 channels), got {fpn_channels!r}"
        )
    check_choice("neck", args["neck"], NECKS)
    if kind == "retinanet":
        check_choice("head", args["head"], ("convolution",), "RetinaNet has no official involution head")
    else:
        check_choice("head", args["head"], HEADS)
    backbone_kwargs = args["backbone_kwargs"]
    if backbone_kwargs is not None and not isinstance(backbone_kwargs, dict):
        raise TypeError(f"backbone_kwargs must be a dict or None, got {type(backbone_kwargs).__name__}")


def _detector_cfg(kind: str, neck: str, head: str, min_size: int, max_size: int) -> dict[str, Any]:
    """pretrained_cfg of a COCO detector: ImageNet mean/std, the transform's resize, the official model card."""
    params, gflops, box_ap, mask_ap = CARDS[(kind, neck, head)]
    return {
        "num_classes": 80,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "min_size": min_size,
        "max_size": max_size,
        "paper": "https://arxiv.org/abs/2103.06255",
        "origin": f"official mmdet {kind} RedNet-50-FPN (d-li14/involution det/), neck={neck}, head={head}",
        "paper_params_m": params,
        "paper_gflops": gflops,
        "paper_box_ap": box_ap,
        **({"paper_mask_ap": mask_ap} if mask_ap is not None else {}),
    }


def _assemble(
    kind: str,
    backbone_checkpoint: str | None,
    num_classes: int,
    neck: str,
    head: str,
    frozen_stages: int,
    norm_eval: bool,
    backbone_kwargs: dict[str, Any],
    fpn_channels: int,
    min_size: int,
    max_size: int,
    in_chans: int,
    **detector_kwargs: Any,
) -> nn.Module:
    """The torchvision detector of ``kind`` on a RedNet-50 FPN (arguments as for the entry points)."""
    out_indices = (1, 2, 3) if kind == "retinanet" else (0, 1, 2, 3)
    body = build_rednet_body(out_indices, in_chans, backbone_kwargs)
    if backbone_checkpoint is not None:
        load_backbone_checkpoint(body, backbone_checkpoint)
    if norm_eval:
        freeze_batchnorm(body)
    extra = "p6p7" if kind == "retinanet" else "pool"
    backbone = RedNetFPN(body, fpn_channels, extra=extra, neck=neck, frozen_stages=frozen_stages)
    mean, std = (list(channel_stats(v, in_chans)) for v in (IMAGENET_MEAN, IMAGENET_STD))
    common = {"min_size": min_size, "max_size": max_size, "image_mean": mean, "image_std": std}
    if kind == "retinanet":
        anchors = detector_kwargs.pop("anchor_generator", None) or retina_anchor_generator()
        retina_head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes + 1)
        model: RedNetRetinaNet | FasterRCNN = RedNetRetinaNet(
            backbone, num_classes + 1, anchor_generator=anchors, head=retina_head, **common, **detector_kwargs
        )
    else:
        anchors = detector_kwargs.pop("rpn_anchor_generator", None) or rcnn_anchor_generator()
        rpn = rpn_head(fpn_channels, anchors.num_anchors_per_location()[0], head)
        common.update(rpn_anchor_generator=anchors, rpn_head=rpn)
        if kind == "maskrcnn":
            model = MaskRCNN(
                backbone,
                None,  # torchvision wants the class count through the predictors when one is given
                box_predictor=FastRCNNPredictor(1024, num_classes + 1),
                mask_head=mask_head(fpn_channels, head),
                mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
                **common,
                **detector_kwargs,
            )
        else:
            model = FasterRCNN(backbone, num_classes + 1, **common, **detector_kwargs)
    model.num_classes = num_classes
    return model


def _build(kind: str, name: str, checkpoint: str | None, backbone_checkpoint: str | None, kwargs: dict) -> nn.Module:
    """Shared builder of the entry points: checks the arguments, builds through the registry, loads ``checkpoint``."""
    if kwargs.pop("features_only", False):
        raise ValueError(
            f"{name} is a detector and has no features_only form; for the backbone alone use "
            "create_model('rednet50', stem_kernel_size=7, features_only=True)"
        )
    kwargs.pop("out_indices", None)  # only meaningful with features_only, which is refused
    args = {key: kwargs.pop(key, default) for key, default in _ARGS.items()}
    _check_args(kind, args)
    args["backbone_kwargs"] = dict(args["backbone_kwargs"] or {})
    if kind == "retinanet":
        kwargs.setdefault("detections_per_img", 100)  # official max_per_img
    else:
        kwargs.setdefault("rpn_post_nms_top_n_train", 1000)  # official rpn_proposal max_num
    # modules (anchor generators ...) go to the detector but are not recorded: model_kwargs stay JSON-able
    modules = {k: v for k, v in kwargs.items() if isinstance(v, nn.Module)}
    recorded = {**args, **{k: v for k, v in kwargs.items() if k not in modules}}
    fixed = {"kind": kind, "backbone_checkpoint": backbone_checkpoint, **modules}
    cfg = _detector_cfg(kind, args["neck"], args["head"], args["min_size"], args["max_size"])
    model = build_model(_assemble, name, fixed, recorded, cfg)
    if checkpoint is not None:
        load_detector_checkpoint(model, checkpoint)
    return model


@register_model
def fasterrcnn_rednet50_fpn(
    checkpoint: str | None = None, backbone_checkpoint: str | None = None, **kwargs: Any
) -> FasterRCNN:
    """Faster R-CNN, RedNet-50-FPN (official ``faster_rcnn_red50{,_neck}_fpn{,_head}_1x_coco``).

    Structure: RedNet-50 body (K=7 stem involution) -> FPN over C2..C5 (lateral 1x1 convs, 3x3 output convs or,
    with ``neck="involution"``, ``Involution2d(256, 7)``; max-pool P6) -> RPN (3 anchors per pixel, 3x3 conv or,
    with ``head="involution"``, ``Involution2d(256, 7)`` + ReLU) -> RoIAlign 7x7 -> two 1024-wide FCs -> K+1 class
    scores and class-specific boxes.

    Official (num_classes=80, COCO val2017, 1x): convolution neck 31.6 M params, 177.9 GFLOPs, box AP 39.5;
    involution neck 29.5 M, 135.0 GFLOPs, 40.2; involution neck + head 29.0 M, 91.5 GFLOPs, 39.2.

    Args:
        num_classes: object classes K (COCO 80); labels 1..K, background added internally.
        neck, head: ``"convolution"`` or ``"involution"``.
        backbone_checkpoint: initial backbone weights (mmcls ImageNet ``.pth``, plain state dict, safetensors; a
            K=3 stem generator is left freshly initialised with a warning).
        checkpoint: a whole-detector checkpoint (official mmdet ``.pth`` or this library's state dict).
        frozen_stages: -1 none, 0 the stem, k the stem + layer1..k (official 1).
        norm_eval: backbone BatchNorms become ``FrozenBatchNorm2d`` (official True), affine values included:
            meant for a pretrained backbone (``backbone_checkpoint``/``checkpoint``). Without one the frozen BNs
            keep their initial values (the residual branches' zero-initialised last BN then stays zero, so only
            the stem, downsample paths, neck and heads learn): to train from scratch use ``frozen_stages=-1,
            norm_eval=False``, a fully trainable backbone with ordinary BN.
        backbone_kwargs: passed to ``create_model("rednet50", ...)`` (e.g. ``width=0.25``).
        fpn_channels: FPN (and head) width, official 256.
        min_size, max_size: the transform's resize (shorter side, cap on the longer side).
        in_chans: image channels (the backbone's input).
        **detector_kwargs: passed to torchvision's ``FasterRCNN`` (``box_detections_per_img`` ...).
    """
    return _build("fasterrcnn", "fasterrcnn_rednet50_fpn", checkpoint, backbone_checkpoint, kwargs)


@register_model
def maskrcnn_rednet50_fpn(
    checkpoint: str | None = None, backbone_checkpoint: str | None = None, **kwargs: Any
) -> MaskRCNN:
    """Mask R-CNN, RedNet-50-FPN (official ``mask_rcnn_red50{,_neck}_fpn{,_head}_1x_coco``).

    Faster R-CNN (see :func:`fasterrcnn_rednet50_fpn`) plus a mask branch: RoIAlign 14x14 -> four 3x3 convs + ReLU
    (``head="involution"``: ``Involution2d(256, 7)`` + ReLU each, and the RPN conv too) -> 2x deconv -> K+1 28x28
    mask logits (the background one unused).

    Official (num_classes=80, COCO val2017, 1x): convolution neck 34.2 M params, 224.2 GFLOPs, box AP 39.9, mask AP
    35.7; involution neck 32.2 M, 181.3 GFLOPs, 40.8 / 36.4; involution neck + head 29.5 M, 104.6 GFLOPs, 39.6 / 35.1.

    Arguments as for :func:`fasterrcnn_rednet50_fpn`; ``detector_kwargs`` go to torchvision's ``MaskRCNN``.
    """
    return _build("maskrcnn", "maskrcnn_rednet50_fpn", checkpoint, backbone_checkpoint, kwargs)


@register_model
def retinanet_rednet50_fpn(
    checkpoint: str | None = None, backbone_checkpoint: str | None = None, **kwargs: Any
) -> RedNetRetinaNet:
    """RetinaNet, RedNet-50-FPN (official ``retinanet_red50{,_neck}_fpn_1x_coco``).

    Structure: RedNet-50 body -> FPN over C3..C5 (3x3 output convs, or ``Involution2d(256, 7)`` with
    ``neck="involution"``) with P6 = 3x3/2 conv on C5 and P7 = 3x3/2 conv on P6 (mmdet ``add_extra_convs=
    'on_input'``, no ReLU between; these stay convolutions) -> RetinaNet head (4 convs per branch, 9 anchors per
    pixel, sigmoid focal loss). The classifier has K+1 channels per anchor; channel 0 (background) never occurs
    in the targets and is masked at inference, so labels are 1..K as for the R-CNNs. ``head`` must be
    ``"convolution"``: there is no official involution RetinaNet head.

    Official (num_classes=80, COCO val2017, 1x): convolution neck 27.8 M params, 210.1 GFLOPs, box AP 38.2;
    involution neck 26.3 M, 199.9 GFLOPs, 38.2.

    Arguments as for :func:`fasterrcnn_rednet50_fpn`; ``detector_kwargs`` go to torchvision's ``RetinaNet``
    (``detections_per_img`` defaults to the official 100).
    """
    return cast(RedNetRetinaNet, _build("retinanet", "retinanet_rednet50_fpn", checkpoint, backbone_checkpoint, kwargs))


__all__ = [
    "CARDS",
    "fasterrcnn_rednet50_fpn",
    "maskrcnn_rednet50_fpn",
    "rcnn_anchor_generator",
    "retina_anchor_generator",
    "retinanet_rednet50_fpn",
]
