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
from pathlib import Path

from torch import nn

from .checkpoint import LoadReport, apply_state_dict, read_checkpoint, to_model_keys

# Keys whose shape depends on the stem involution's kernel size: they may differ between checkpoint and backbone.
KERNEL_SIZE_DEPENDENT = ("stem.1.conv2.",)
DETECTOR_BODY = "backbone.body."  # the RedNet inside this library's torchvision detectors


def load_backbone_checkpoint(
    backbone: nn.Module,
    path: str | os.PathLike,
    tolerate: tuple[str, ...] = KERNEL_SIZE_DEPENDENT,
) -> LoadReport:
    """Load ``path`` into ``backbone`` (in place), tolerating shape mismatches under ``tolerate`` only.

    Args:
        backbone: a RedNet/ResNet, typically ``features_only`` (its dropped stages and classifier are skipped).
        path: anything :func:`~involution.models.create_model` reads: an official mmcls ``.pth``
            (``backbone.``/``head.`` keys; the ``neck.``/``decode_head.`` ... parts of mmdet/mmseg files are
            ignored with a warning), a plain state dict, this library's safetensors, or the state dict of one of
            this library's detectors (``backbone.body.`` keys) or segmentors.
        tolerate: key prefixes whose shape mismatches are allowed (default: the stem kernel generator's last conv).

    Returns:
        a :class:`~involution.models.LoadReport` (``loaded``, ``ignored``, ``layout``, ``reinitialised``: the
        backbone keys whose checkpoint tensors had another shape and were left as initialised).

    Raises:
        FileNotFoundError / ValueError: missing or unreadable file (naming it).
        RuntimeError: any other missing, unexpected or mismatched key (listing them).
    """
    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    if any(k.startswith(DETECTOR_BODY) for k in state_dict):  # this library's detectors: backbone.body.*
        report = LoadReport(path=str(path), layout="detector")
        report.ignored = [k for k in state_dict if not k.startswith(DETECTOR_BODY)]
        state_dict = {k[len(DETECTOR_BODY) :]: v for k, v in state_dict.items() if k.startswith(DETECTOR_BODY)}
        parts = sorted({k.split(".", 1)[0] for k in report.ignored})
        warnings.warn(f"{path}: ignored {len(report.ignored)} keys of other parts ({', '.join(parts)})", stacklevel=2)
    else:  # this library's files, and official mmcls / mmdet / mmseg ones through the backbone's filter
        state_dict, report = to_model_keys(backbone, state_dict, metadata, str(path), check_name=False)
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
        # the backbone's own tensors stand in for them, so the strict check sees them as present
        state_dict = {**state_dict, **{k: own[k] for k in reinit}}
    applied = apply_state_dict(backbone, state_dict, source=str(path))
    report.loaded = [k for k in applied.loaded if k not in reinit]
    report.head_reinitialised, report.reinitialised = applied.head_reinitialised, reinit
    return report
