"""Initialise a dense-prediction backbone from a classification checkpoint.

The official detection and segmentation backbones are RedNets whose stem involution has K=7, while the official
ImageNet RedNets (which they start from) have K=3. Only the last 1x1 convolution of the stem's kernel generator
(``stem.1.conv2.conv``, ``G*K*K`` outputs) differs in shape; :func:`load_backbone_checkpoint` loads every other
key and leaves those freshly initialised, with a warning naming them. Anything else that does not fit (a missing,
unexpected or otherwise mismatched key) is an error, exactly as in :func:`involution.models.load_checkpoint`.

>>> backbone = create_model("rednet50", stem_kernel_size=7, features_only=True)
>>> report = load_backbone_checkpoint(backbone, "rednet50-imagenet.pth")   # doctest: +SKIP
>>> report.reinitialised
['stem.1.conv2.conv.weight', 'stem.1.conv2.conv.bias']
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .checkpoint import FORMAT, LoadReport, apply_state_dict, is_official_layout, official_to_ours, read_checkpoint

# Keys whose shape depends on the stem involution's kernel size: they may differ between checkpoint and backbone.
KERNEL_SIZE_DEPENDENT = ("stem.1.conv2.",)
DETECTOR_BODY = "backbone.body."  # the RedNet inside this library's torchvision detectors


@dataclass
class BackboneLoadReport(LoadReport):
    """A :class:`~involution.models.LoadReport` plus ``reinitialised``: the backbone keys whose checkpoint tensors
    had another shape (the stem kernel generator of a K=3 file in a K=7 backbone) and were left as initialised."""

    reinitialised: list[str] = field(default_factory=list)


def load_backbone_checkpoint(
    backbone: nn.Module,
    path: str | os.PathLike,
    tolerate: tuple[str, ...] = KERNEL_SIZE_DEPENDENT,
) -> BackboneLoadReport:
    """Load ``path`` into ``backbone`` (in place), tolerating shape mismatches under ``tolerate`` only.

    Args:
        backbone: a RedNet/ResNet, typically ``features_only`` (its dropped stages and classifier are skipped).
        path: anything :func:`~involution.models.create_model` reads: an official mmcls ``.pth``
            (``backbone.``/``head.`` keys; the ``neck.``/``decode_head.`` ... parts of mmdet/mmseg files are
            ignored with a warning), a plain state dict, this library's safetensors, or the state dict of one of
            this library's detectors (``backbone.body.`` keys) or segmentors.
        tolerate: key prefixes whose shape mismatches are allowed (default: the stem kernel generator's last conv).

    Returns:
        a :class:`BackboneLoadReport` (``loaded``, ``ignored``, ``layout``, ``reinitialised``).

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file (naming it).
        RuntimeError: any other missing, unexpected or mismatched key (listing them).
    """
    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    layout, ignored = "plain", []
    if any(k.startswith(DETECTOR_BODY) for k in state_dict):  # this library's detectors: backbone.body.*
        layout = "detector"
        ignored = [k for k in state_dict if not k.startswith(DETECTOR_BODY)]
        state_dict = {k[len(DETECTOR_BODY) :]: v for k, v in state_dict.items() if k.startswith(DETECTOR_BODY)}
    elif metadata.get("format") == FORMAT:
        layout = FORMAT
    elif is_official_layout(state_dict):  # mmcls / mmdet / mmseg files, and this library's segmentors
        layout = "official"
        state_dict, ignored = official_to_ours(state_dict)
    if ignored:
        parts = sorted({k.split(".", 1)[0] for k in ignored})
        warnings.warn(f"{path}: ignored {len(ignored)} keys of other parts ({', '.join(parts)})", stacklevel=2)

    own = backbone.state_dict()
    reinit = [
        k
        for k in own
        if k in state_dict and k.startswith(tolerate) and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if reinit:
        shapes = ", ".join(
            f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})" for k in reinit
        )
        warnings.warn(
            f"{path}: shapes differ (another stem kernel size); left freshly initialised: {shapes}", stacklevel=2
        )
        # the backbone's own tensors stand in for them, so the strict check below sees them as present
        state_dict = {**state_dict, **{k: own[k] for k in reinit}}
    base = apply_state_dict(backbone, state_dict, source=str(path))
    return BackboneLoadReport(
        path=str(path),
        loaded=[k for k in base.loaded if k not in reinit],
        head_reinitialised=base.head_reinitialised,
        ignored=ignored,
        layout=layout,
        reinitialised=reinit,
    )
