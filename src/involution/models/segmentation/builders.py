"""Registered segmentation models: ``fpn_rednet50`` (Semantic FPN) and ``upernet_rednet50`` (UPerNet).

Both follow the official configs of d-li14/involution (``seg/configs/_base_/models/{fpn_red50,fpn_red50_neck,
upernet_red50}.py``, mmsegmentation, Cityscapes 512x1024 crops, 80k iterations): a RedNet-50 backbone with a K=7
stem involution and BN that is trained (not frozen, no frozen stages), 19 classes.

>>> from involution.models import create_model
>>> model = create_model("fpn_rednet50", num_classes=19, neck="involution")
>>> tiny = create_model("upernet_rednet50", backbone_kwargs={"width": 0.125}, head_channels=16, aux_channels=8)
>>> tiny.eval()(torch.randn(1, 3, 33, 47))["out"].shape
torch.Size([1, 19, 33, 47])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from torch import nn

from ...layers.conv_norm_act import LayerFactory, resolve_norm
from ..backbone_init import load_backbone_checkpoint
from ..rednet import RedNet
from ..registry import build_model, create_model, default_cfg, register_model
from ._common import norm_name
from .fpn_neck import FPN, check_neck
from .heads import FCNHead, FPNHead, UPerHead
from .segmentor import Segmentor

BACKBONE = "rednet50"
# Arguments the segmentor sets on its backbone itself; backbone_kwargs may not name them.
_RESERVED_BACKBONE_KWARGS = ("features_only", "out_indices", "num_classes", "in_chans", "norm_layer", "checkpoint")


def _segmentation_cfg(**card: Any) -> dict[str, Any]:
    """pretrained_cfg of a Cityscapes segmentor: ImageNet mean/std (0-1 and 0-255 scales), 512x1024 crops."""
    return default_cfg(
        input_size=(3, 512, 1024),
        min_input_size=(3, 32, 32),
        resize=None,
        crop_pct=1.0,
        crop_mode=None,
        pool_size=None,
        num_classes=19,
        first_conv=Segmentor.first_conv,
        classifier=Segmentor.classifier_name,
        dataset="cityscapes",
        train_crop_size=(512, 1024),
        test_size=(1024, 2048),
        paper="https://arxiv.org/abs/2103.06255",
        **card,
    )


def build_backbone(
    in_chans: int = 3,
    norm_layer: LayerFactory = nn.BatchNorm2d,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> RedNet:
    """``create_model("rednet50", stem_kernel_size=7, features_only=True, ...)``: the official seg backbone."""
    kwargs = dict(backbone_kwargs or {})
    reserved = sorted(set(kwargs) & set(_RESERVED_BACKBONE_KWARGS))
    if reserved:
        raise ValueError(
            f"backbone_kwargs may not set {reserved}: the segmentor sets them (pass in_chans, norm_layer, "
            "backbone_checkpoint to the segmentation model instead)"
        )
    kwargs = {"stem_kernel_size": 7, **kwargs}
    backbone = create_model(BACKBONE, in_chans=in_chans, features_only=True, norm_layer=norm_layer, **kwargs)
    return cast(RedNet, backbone)  # (BACKBONE is a RedNet)


def _head_args(num_classes: int, dropout_ratio: float, align_corners: bool, norm: LayerFactory) -> dict[str, Any]:
    """The arguments every decode head takes."""
    return {
        "num_classes": num_classes, "dropout_ratio": dropout_ratio, "align_corners": align_corners, "norm_layer": norm
    }


def _build_semantic_fpn(
    num_classes: int = 19,
    in_chans: int = 3,
    neck: str = "convolution",
    backbone_kwargs: Mapping[str, Any] | None = None,
    norm_layer: str | LayerFactory = "bn",
    align_corners: bool = False,
    neck_channels: int = 256,
    head_channels: int = 128,
    dropout_ratio: float = 0.1,
) -> Segmentor:
    norm = resolve_norm(norm_layer)
    backbone = build_backbone(in_chans, norm, backbone_kwargs)
    fpn = FPN(backbone.feature_info.channels(), neck_channels, neck=neck, norm_layer=norm)
    head = FPNHead(
        [neck_channels] * len(fpn.in_channels),
        backbone.feature_info.reduction(),
        channels=head_channels,
        **_head_args(num_classes, dropout_ratio, align_corners, norm),
    )
    return Segmentor(backbone, head, neck=fpn, align_corners=align_corners)


def _build_upernet(
    num_classes: int = 19,
    in_chans: int = 3,
    neck: str = "convolution",
    backbone_kwargs: Mapping[str, Any] | None = None,
    aux_head: bool = True,
    norm_layer: str | LayerFactory = "bn",
    align_corners: bool = False,
    head_channels: int = 512,
    aux_channels: int = 256,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    dropout_ratio: float = 0.1,
    aux_loss_weight: float = 0.4,
) -> Segmentor:
    norm = resolve_norm(norm_layer)
    backbone = build_backbone(in_chans, norm, backbone_kwargs)
    channels = backbone.feature_info.channels()
    head_args = _head_args(num_classes, dropout_ratio, align_corners, norm)
    head = UPerHead(channels, channels=head_channels, pool_scales=pool_scales, fpn_layer=neck, **head_args)
    aux = FCNHead(channels[2], channels=aux_channels, num_convs=1, **head_args) if aux_head else None
    return Segmentor(
        backbone, head, auxiliary_head=aux, aux_in_index=2, aux_loss_weight=aux_loss_weight, align_corners=align_corners
    )


def _create(
    name: str,
    builder: Any,
    cfg: dict[str, Any],
    kwargs: dict[str, Any],
    backbone_checkpoint: str | os.PathLike | None,
    checkpoint: str | os.PathLike | None,
) -> Segmentor:
    if kwargs.pop("features_only", False):
        raise ValueError(
            f"{name} is a segmentation model and has no features_only form; build the backbone with "
            f"create_model({BACKBONE!r}, stem_kernel_size=7, features_only=True) instead"
        )
    if "out_indices" in kwargs:
        raise ValueError(f"{name}: out_indices only applies with features_only, which segmentation models refuse")
    num_classes = kwargs.get("num_classes", 19)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"{name}: num_classes must be an int >= 1 (the label maps' class count, e.g. 19 for "
            f"Cityscapes; no background class is added), got {num_classes!r}"
        )
    check_neck(kwargs.get("neck", "convolution"))
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = norm_name(kwargs["norm_layer"])  # a name, so model_kwargs stay JSON-able
    if "pool_scales" in kwargs:
        kwargs["pool_scales"] = list(kwargs["pool_scales"])
    model = build_model(builder, name, {}, kwargs, cfg)
    if backbone_checkpoint is not None:
        model.backbone_load_report = load_backbone_checkpoint(model.backbone, backbone_checkpoint)
    if checkpoint is not None:
        model.load_checkpoint(checkpoint)
    return model


@register_model
def fpn_rednet50(
    backbone_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    aux_head: bool = False,
    **kwargs: Any,
) -> Segmentor:
    """Semantic FPN with a RedNet-50 backbone (K=7 stem), Cityscapes: the official ``fpn_red50`` configs.

    FPN neck (4 outputs of ``neck_channels=256``; no norm in the neck, as configured officially) and FPNHead
    (``head_channels=128``, scale heads over strides 4/8/16/32 upsampled and summed, dropout 0.1, ``conv_seg``).

    * ``neck="convolution"``: official 18.5 M parameters, Cityscapes val mIoU 78.01 (512x1024, 80k iterations).
    * ``neck="involution"``: the 3x3 output convs become K=7 involutions; official 16.4 M, mIoU 79.13.

    This library counts 18,463,169 / 16,372,737 parameters with 19 classes (see tests/models/test_segmentation_models.py).

    Args:
        num_classes: classes of the label maps (19). in_chans: image channels (3).
        neck: ``"convolution"`` or ``"involution"``.
        backbone_checkpoint: initialise the backbone from an ImageNet RedNet-50 file (official mmcls, plain, or
            ours); the K=3 stem generator of a classification file stays freshly initialised, with a warning.
        checkpoint: an official mmseg file or this library's state dict of the whole model.
        backbone_kwargs: extra arguments of the backbone (``width``, ``grad_checkpointing`` ...).
        norm_layer: ``"bn"`` (default), ``"syncbn"`` or a factory, for backbone, heads and involution generators.
        align_corners: of every bilinear resize (official False).
        neck_channels, head_channels, dropout_ratio: widths and dropout (official 256, 128, 0.1).
        aux_head: must stay False: the official Semantic FPN has no auxiliary head.

    Returns a :class:`Segmentor`: ``model(images)["out"]`` are ``(N, num_classes, H, W)`` logits.
    """
    if aux_head:
        raise ValueError(
            "fpn_rednet50 has no auxiliary head (the official Semantic FPN config has none); "
            "use upernet_rednet50 for one"
        )
    card = {
        "paper_params_m": {"convolution": 18.5, "involution": 16.4},
        "paper_miou": {"convolution": 78.01, "involution": 79.13},
        "origin": "d-li14/involution seg/configs/involution/fpn_red50[_neck]_512x1024_80k_cityscapes.py",
    }
    return _create(
        "fpn_rednet50", _build_semantic_fpn, _segmentation_cfg(**card), kwargs, backbone_checkpoint, checkpoint
    )


@register_model
def upernet_rednet50(
    backbone_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Segmentor:
    """UPerNet with a RedNet-50 backbone (K=7 stem), Cityscapes: the official ``upernet_red50`` config.

    UPerHead (``head_channels=512``, PPM with ``pool_scales=(1, 2, 3, 6)`` on C5, 1x1 lateral and 3x3 fpn convs,
    ``fpn_bottleneck``, dropout 0.1) plus the auxiliary FCNHead on C4 (1024 -> ``aux_channels=256``, one 3x3 conv,
    dropout 0.1, ``conv_seg``; its loss weight is 0.4 officially, ``model.aux_loss_weight``). The auxiliary head
    only runs in training mode (``"aux"`` in the output).

    Official: 56.4 M parameters (with the auxiliary head, as mmseg counts), Cityscapes val mIoU 80.55 (512x1024,
    80k iterations). This library counts 56,380,500 with 19 classes (54,015,809 without the auxiliary head;
    50,103,732 with ``neck="involution"`` and the auxiliary head).

    Args:
        as for :func:`fpn_rednet50`, plus ``aux_head`` (True), ``aux_channels``, ``pool_scales``,
        ``aux_loss_weight``. ``neck="involution"`` makes the UPerHead's ``fpn_convs`` K=7 involutions: not an
        official configuration, so there is no official count or mIoU for it.
    """
    card = {
        "paper_params_m": 56.4,
        "paper_miou": 80.55,
        "aux_loss_weight": kwargs.get("aux_loss_weight", 0.4),
        "origin": "d-li14/involution seg/configs/involution/upernet_red50_512x1024_80k_cityscapes.py",
    }
    return _create(
        "upernet_rednet50", _build_upernet, _segmentation_cfg(**card), kwargs, backbone_checkpoint, checkpoint
    )
