"""Loading whole-detector checkpoints: official mmdet files and this library's own state dicts.

Official mmdet checkpoints (``{'meta', 'state_dict'}``) name the parts ``backbone.``, ``neck.``, ``rpn_head.``,
``roi_head.`` (Faster/Mask R-CNN) and ``bbox_head.`` (RetinaNet). The map onto the torchvision modules here:

==========================================  ==========================================================
mmdet                                       here
==========================================  ==========================================================
``backbone.X``                              ``backbone.body.X``
``neck.lateral_convs.i.conv.X``             ``backbone.fpn.inner_blocks.i.0.X``
``neck.fpn_convs.i.conv.X`` (conv neck)     ``backbone.fpn.layer_blocks.i.0.X``
``neck.fpn_convs.i.X`` (involution neck)    ``backbone.fpn.layer_blocks.i.X``
``neck.fpn_convs.{n,n+1}.conv.X`` (Retina)  ``backbone.fpn.extra_blocks.{p6,p7}.X``
``rpn_head.rpn_conv.X``                     ``rpn.head.conv.0.0.X`` (a Conv2d or an Involution2d)
``rpn_head.rpn_cls`` / ``rpn_reg``          ``rpn.head.cls_logits`` / ``bbox_pred``
``roi_head.bbox_head.shared_fcs.{0,1}``     ``roi_heads.box_head.{fc6,fc7}``
``roi_head.bbox_head.fc_cls``               ``roi_heads.box_predictor.cls_score`` (background row moved first)
``roi_head.bbox_head.fc_reg``               ``roi_heads.box_predictor.bbox_pred`` (4 background rows added)
``roi_head.mask_head.convs.i.conv.X``       ``roi_heads.mask_head.i.0.X`` (conv head)
``roi_head.mask_head.convs.i.0.X``          ``roi_heads.mask_head.i.0.X`` (involution head)
``roi_head.mask_head.upsample``             ``roi_heads.mask_predictor.conv5_mask``
``roi_head.mask_head.conv_logits``          ``roi_heads.mask_predictor.mask_fcn_logits`` (background row added)
``bbox_head.{cls,reg}_convs.i.conv.X``      ``head.{classification,regression}_head.conv.i.0.X``
``bbox_head.retina_cls``                    ``head.classification_head.cls_logits`` (a background row per anchor)
``bbox_head.retina_reg``                    ``head.regression_head.bbox_reg``
==========================================  ==========================================================

mmdet puts the background class last (``fc_cls`` has K+1 rows) and has no background rows elsewhere; torchvision
puts it first everywhere. Rows without an mmdet counterpart keep the model's fresh initialisation (they are never
used: torchvision drops background boxes and masks, and RetinaNet's channel 0 is masked at inference).

Rules: the backbone must fit exactly (``RuntimeError`` listing missing / unexpected / mismatched keys); for the
neck and heads, keys that do not correspond (e.g. an involution neck's file into a convolution neck) or whose
shapes differ (another class count) are skipped, and a warning lists them and the model keys left initialised.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import FORMAT, LoadReport, fit_state_dict, fmt_keys, read_checkpoint

MMDET_PARTS = ("backbone.", "neck.", "rpn_head.", "roi_head.", "bbox_head.")
# Our keys whose shapes depend on the class count: a different count is skipped with a warning, not an error.
CLASS_DEPENDENT = (
    "roi_heads.box_predictor.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
    "head.classification_head.cls_logits.",
)


def is_mmdet_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """mmdet keys: ``backbone.`` without our ``backbone.body.``, or any of ``neck.``/``rpn_head.``/... prefixes."""
    if any(k.startswith("backbone.body.") for k in state_dict):
        return False
    return any(k.startswith(MMDET_PARTS) for k in state_dict)


# -- class-row conversions (mmdet -> torchvision) ------------------------------------------------------------------


def _cls_background_first(src: Tensor, own: Tensor) -> Tensor | None:
    """``fc_cls`` rows (K classes, then background) -> (background, K classes)."""
    if src.shape[0] != own.shape[0] or src.shape[1:] != own.shape[1:]:
        return None
    return torch.cat([src[-1:], src[:-1]])


def _add_background(groups: int, width: int) -> Callable[[Tensor, Tensor], Tensor | None]:
    """mmdet rows of K classes -> ours of K+1 with the background class first, in each of ``groups`` groups of
    classes (RetinaNet's anchors) and ``width`` rows per class (a box's 4 coordinates); the background rows keep
    the model's initialisation."""

    def convert(src: Tensor, own: Tensor) -> Tensor | None:
        step = groups * width
        if own.shape[0] % step or src.shape[0] % step or src.shape[1:] != own.shape[1:]:
            return None
        k_own, k_src = own.shape[0] // step, src.shape[0] // step
        if k_own != k_src + 1:
            return None
        ours = own.detach().clone().to(src.dtype).unflatten(0, (groups, k_own, width))
        ours[:, 1:] = src.unflatten(0, (groups, k_src, width))
        return ours.flatten(0, 2)

    return convert


# -- key mapping ---------------------------------------------------------------------------------------------------


def _mmdet_rules(kind: str, num_levels: int) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, replacement) pairs for mmdet key prefixes; the first match wins."""
    rules = [
        (r"backbone\.", "backbone.body."),
        (r"neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    ]
    if kind == "retinanet":
        rules += [
            (rf"neck\.fpn_convs\.{num_levels}\.conv\.", "backbone.fpn.extra_blocks.p6."),
            (rf"neck\.fpn_convs\.{num_levels + 1}\.conv\.", "backbone.fpn.extra_blocks.p7."),
            (r"bbox_head\.cls_convs\.(\d+)\.conv\.", r"head.classification_head.conv.\1.0."),
            (r"bbox_head\.reg_convs\.(\d+)\.conv\.", r"head.regression_head.conv.\1.0."),
            (r"bbox_head\.retina_cls\.", "head.classification_head.cls_logits."),
            (r"bbox_head\.retina_reg\.", "head.regression_head.bbox_reg."),
        ]
    rules += [
        (r"neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
        (r"neck\.fpn_convs\.(\d+)\.", r"backbone.fpn.layer_blocks.\1."),
        (r"rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
        (r"rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
        (r"rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
        (r"roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
        (r"roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
        (r"roi_head\.bbox_head\.fc_cls\.", "roi_heads.box_predictor.cls_score."),
        (r"roi_head\.bbox_head\.fc_reg\.", "roi_heads.box_predictor.bbox_pred."),
        (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.", r"roi_heads.mask_head.\1.0."),
        (r"roi_head\.mask_head\.convs\.(\d+)\.0\.", r"roi_heads.mask_head.\1.0."),
        (r"roi_head\.mask_head\.upsample\.", "roi_heads.mask_predictor.conv5_mask."),
        (r"roi_head\.mask_head\.conv_logits\.", "roi_heads.mask_predictor.mask_fcn_logits."),
    ]
    return [(re.compile(p), r) for p, r in rules]


def _converter(key: str, num_anchors: int) -> Callable[[Tensor, Tensor], Tensor | None] | None:
    if key.startswith("roi_heads.box_predictor.cls_score."):
        return _cls_background_first
    if key.startswith("roi_heads.box_predictor.bbox_pred."):
        return _add_background(1, 4)
    if key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return _add_background(1, 1)
    if key.startswith("head.classification_head.cls_logits."):
        return _add_background(num_anchors, 1)
    return None


def _detector_kind(model: nn.Module) -> str:
    if hasattr(model, "head") and hasattr(model.head, "classification_head"):
        return "retinanet"
    return "maskrcnn" if getattr(model.roi_heads, "mask_head", None) is not None else "fasterrcnn"


def mmdet_to_ours(state_dict: Mapping[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and re-row) an mmdet detector state dict for ``model``: ``(state_dict, skipped_keys)``.

    Skipped: keys that map to nothing in ``model`` or whose converted shape does not fit (outside the backbone;
    the backbone's keys are passed through for the strict check).
    """
    kind = _detector_kind(model)
    detector: Any = model  # a torchvision detector (torchvision ships no type information)
    num_levels = len(detector.backbone.fpn.inner_blocks)
    num_anchors = detector.anchor_generator.num_anchors_per_location()[0] if kind == "retinanet" else 0
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    skipped: list[str] = []
    rules = _mmdet_rules(kind, num_levels)
    for key, value in state_dict.items():
        new = None
        for pattern, repl in rules:
            if pattern.match(key):
                new = pattern.sub(repl, key, count=1)
                break
        if new is None:
            skipped.append(key)
            continue
        if new.startswith("backbone.body."):
            out[new] = value
            continue
        if new not in own:
            skipped.append(key)
            continue
        convert = _converter(new, num_anchors)
        if convert is not None:
            converted = convert(value, own[new])
            if converted is None:
                skipped.append(f"{key} {tuple(value.shape)}")
                continue
            value = converted
        if tuple(value.shape) != tuple(own[new].shape):
            skipped.append(f"{key} {tuple(value.shape)}")
            continue
        out[new] = value
    return out, skipped


# -- loading -------------------------------------------------------------------------------------------------------


def load_detector_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load an official mmdet checkpoint, or one of this library's detector state dicts, into ``model`` (in place).

    See the module docstring for the key map and the rules. BatchNorm ``num_batches_tracked`` entries are optional
    on both sides (frozen BNs have none).

    Returns:
        a :class:`~involution.models.LoadReport`: the layout read (``"mmdet"``, ``"plain"`` or ``"involution"``),
        our keys loaded, checkpoint keys skipped and model keys left freshly initialised.

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file.
        RuntimeError: the backbone does not fit (any layout), or anything does not fit in one of our own state
            dicts except class-count dependent layers (which are skipped with a warning).
    """
    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    report = LoadReport(path=str(path), layout="involution" if metadata.get("format") == FORMAT else "plain")
    skipped: list[str] = []
    lenient: tuple[str, ...] = CLASS_DEPENDENT
    if is_mmdet_layout(state_dict):
        report.layout = "mmdet"
        state_dict, skipped = mmdet_to_ours(state_dict, model)
        lenient = ("",)  # everything outside the backbone
    fit = fit_state_dict(model, state_dict, str(path), lenient=lenient, strict=("backbone.body.",))
    skipped += fit.unexpected + [f"{k} {tuple(fit.state_dict[k].shape)}" for k in fit.mismatched]
    ckpt = {k: v for k, v in fit.state_dict.items() if k not in fit.unexpected and k not in fit.mismatched}
    model.load_state_dict(ckpt, strict=False)
    not_loaded = sorted(fit.missing + fit.mismatched)
    if skipped or not_loaded:
        warnings.warn(
            f"{path}: skipped {len(skipped)} checkpoint keys with no counterpart of the same shape "
            f"({fmt_keys(skipped) or 'none'}); left {len(not_loaded)} model keys freshly initialised "
            f"({fmt_keys(not_loaded) or 'none'})",
            stacklevel=3,
        )
    report.loaded, report.skipped, report.not_loaded = sorted(ckpt), skipped, not_loaded
    return report
