"""RedNet checkpoints of other libraries: their key layouts, the filter that maps them to ours, file conversion.

* Official mmcls checkpoints (``{'meta': ..., 'state_dict': {'backbone.stem.0.conv.weight': ...,
  'head.fc.weight': ...}}``) use the module names of :class:`~involution.models.rednet.RedNet`, so mapping them is
  prefix stripping: ``backbone.X -> X``, ``head.fc.X -> fc.X``. The other parts of official detection/segmentation
  checkpoints (``neck.``, ``rpn_head.`` ...) are ignored with a warning.
* PaddleClas's ImageNet weights (``RedNet50_pretrained.pdparams`` ...) hold the official backbone keys without
  ``backbone.``, BatchNorm statistics as ``._mean`` / ``._variance`` (no step counter) and the classifier as
  ``fc.weight`` of shape (in, out), Paddle's ``Linear`` layout, and ``fc.bias``. Key order differs (the stem comes
  last) and is never relied on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .._atomic import refuse_same_file
from ._stages import STAGE_DEPTHS
from .checkpoint import apply_state_dict, read_checkpoint, save_checkpoint
from .registry import create_model

# Parts of official detection / segmentation checkpoints that a classifier or backbone has no use for.
_OTHER_PARTS = ("neck.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.", "decode_head.", "auxiliary_head.")
_OFFICIAL_RENAMES = (("backbone.", ""), ("head.fc.", "fc."))
_PADDLE_STATS = (("._mean", ".running_mean"), ("._variance", ".running_var"))  # Paddle's BatchNorm buffers


def is_official_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are those of an mmcls/mmdet/mmseg model (``backbone.`` prefixes)."""
    return any(k.startswith("backbone.") for k in state_dict)


def official_to_ours(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map official keys to this library's: ``(state_dict, ignored_keys)``.

    ``backbone.X -> X``, ``head.fc.X -> fc.X``; detector/segmentor parts (``neck.`` ...) are returned as ignored;
    anything else keeps its name (and will show up as unexpected).
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(_OTHER_PARTS):
            ignored.append(key)
            continue
        new = key
        for old_prefix, new_prefix in _OFFICIAL_RENAMES:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        out[new] = value
    return out, ignored


def ours_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`official_to_ours` for a RedNet classifier (``fc.X -> head.fc.X``, else ``backbone.``)."""
    return {("head." + k if k.startswith("fc.") else "backbone." + k): v for k, v in state_dict.items()}


def is_paddleclas_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are PaddleClas's (BatchNorm statistics named ``._mean`` / ``._variance``)."""
    return any(k.endswith(tuple(old for old, _ in _PADDLE_STATS)) for k in state_dict)


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def paddleclas_to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map PaddleClas RedNet keys to this library's: BN statistics renamed, ``fc.weight`` transposed to (out, in)."""
    out = {}
    for key, value in state_dict.items():
        new = _renamed(key, _PADDLE_STATS)
        out[new] = value.t().contiguous() if new == "fc.weight" and value.dim() == 2 else value
    return out


def ours_to_paddleclas(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`paddleclas_to_ours` (step counters dropped, as Paddle's BatchNorm has none)."""
    back = tuple((new, old) for old, new in _PADDLE_STATS)
    return {
        _renamed(k, back): (v.t().contiguous() if k == "fc.weight" else v)
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }


def checkpoint_filter_fn(
    state_dict: Mapping[str, Tensor], source: str = "state dict"
) -> tuple[dict[str, Tensor], list[str], str]:
    """``(state_dict, ignored_keys, layout)`` in this library's key names: official files are mapped (with a
    warning naming the parts ignored, layout ``"official"``), PaddleClas files too (layout ``"paddleclas"``),
    others pass as they are (layout ``"plain"``)."""
    if is_paddleclas_layout(state_dict):
        return paddleclas_to_ours(state_dict), [], "paddleclas"
    if not is_official_layout(state_dict):
        return dict(state_dict), [], "plain"
    ours, ignored = official_to_ours(state_dict)
    if ignored:
        parts = sorted({k.split(".", 1)[0] for k in ignored})
        warnings.warn(f"{source}: ignored {len(ignored)} keys of other parts ({', '.join(parts)})", stacklevel=3)
    return ours, ignored, "official"


def infer_rednet_config(state_dict: Mapping[str, Tensor], source: str = "state dict") -> tuple[str, dict[str, Any]]:
    """The registry name and constructor kwargs of a RedNet state dict in this library's key names."""
    blocks = []
    for i in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{i}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    depth = next((d for d, layers in STAGE_DEPTHS.items() if layers == tuple(blocks)), None)
    if depth is None or "stem.1.conv2.conv.weight" not in state_dict:
        raise ValueError(f"{source}: not a RedNet checkpoint (blocks per stage {tuple(blocks)})")
    kwargs: dict[str, Any] = {}
    stem_out = state_dict["stem.4.conv.weight"].shape[0]
    if stem_out != 64:
        kwargs["width"] = stem_out / 64
    stem_gen = state_dict["stem.1.conv2.conv.weight"].shape[0]
    groups = max(1, (stem_out // 2) // 16)
    k = round((stem_gen / groups) ** 0.5)
    if k != 3:
        kwargs["stem_kernel_size"] = k
    in_chans = state_dict["stem.0.conv.weight"].shape[1]
    if in_chans != 3:
        kwargs["in_chans"] = in_chans
    kwargs["num_classes"] = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 0
    return f"rednet{depth}", kwargs


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, name: str | None = None, **kwargs: Any
) -> Path:
    """Convert an official mmcls (``.pth``) or PaddleClas (``.pdparams``) RedNet checkpoint to this library's
    safetensors format.

    The architecture (depth, stem kernel size, class count; 0 classes for a backbone-only file) is read from the
    keys unless ``name`` / ``kwargs`` are given. Returns the written path.
    """
    src = Path(src)
    refuse_same_file(src, dst)
    state_dict, _ = read_checkpoint(src)
    if not (is_official_layout(state_dict) or is_paddleclas_layout(state_dict)):
        raise ValueError(
            f"{src}: not an official mmcls or PaddleClas RedNet checkpoint (no 'backbone.' keys, no '._mean' keys)"
        )
    state_dict, _, _ = checkpoint_filter_fn(state_dict, str(src))
    inferred_name, inferred = infer_rednet_config(state_dict, str(src))
    model = create_model(name or inferred_name, **{**inferred, **kwargs})
    apply_state_dict(model, state_dict, source=str(src))
    return save_checkpoint(model, dst, metadata={"converted_from": src.name})
