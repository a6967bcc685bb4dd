"""What a checkpoint holds, checked before use: finite weights (:func:`check_finite`), and the preprocessing it
records (its ``data_spec``), which is given to the model's ``pretrained_cfg``.

A training run stores what its model was trained on in the checkpoint's ``data_spec`` metadata: ``in_chans``,
``image_size``, per-channel ``mean`` / ``std`` (0-1 pixel scale), ``eval_resize`` (shorter side before the centre
crop, or None: resize straight to the size), ``classes`` and ``dataset``. The model family's defaults (ImageNet
statistics at 224x224, or 32x32 for the ``_small`` variants) say nothing about such a run, so every reader of a
checkpoint (``load_model``, ``create_model(checkpoint=...)``, timm's ``pretrained=True``, predict and eval) takes
mean, std and input size from here: :func:`apply_data_spec` writes them into ``model.pretrained_cfg``, where
timm's ``resolve_data_config`` finds them.

The file is not trusted: every value is checked against limits before anything is sized from it (an
``image_size`` of 100000 would make a resize allocate tens of gigabytes), with errors naming the file and field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_number

#: The largest image side a recorded spec may ask for (8192x8192 RGB as float32 is already 800 MB per image).
MAX_IMAGE_SIZE = 8192
#: The largest shorter side before the centre crop (crop fractions down to one half of the largest size).
MAX_RESIZE = 2 * MAX_IMAGE_SIZE
#: The most input channels a spec may record (images have 1 to 4; hyperspectral stacks a few dozen).
MAX_CHANNELS = 256
#: The most classes a spec may list (ImageNet-21k has 21841).
MAX_CLASSES = 100_000
KEY = "data_spec"
LIST_LIMIT = 12  # keys named in a message


def model_in_chans(model: nn.Module) -> int | None:
    """The input channels ``model`` takes: its ``in_chans``, else its ``pretrained_cfg['input_size'][0]``."""
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int):
        return chans
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return int(size[0]) if size else None


def _stats(field: str, values: Any, chans: int, name: str, positive: bool) -> list[float]:
    """``mean`` or ``std``: ``chans`` finite numbers (positive ones for ``std``)."""
    if not isinstance(values, list):
        raise ValueError(f"{name}.{field} must be a list of {chans} numbers, got {values!r:.80}")  # noqa: TRY004
    if len(values) != chans:
        raise ValueError(f"{name}.{field} has {len(values)} values but the model takes {chans} input channel(s)")
    return [check_number(f"{name}.{field}[{i}]", v, low=0.0, low_open=True) if positive
            else check_number(f"{name}.{field}[{i}]", v) for i, v in enumerate(values)]


def _classes(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(c, str) for c in values):
        raise ValueError(f"{name}.classes must be a list of class names, got {values!r:.80}")
    check_int(f"{name}.classes (their count)", len(values), low=1, high=MAX_CLASSES)
    return list(values)


def check_data_spec(raw: str | Mapping[str, Any], source: str | os.PathLike,
                    in_chans: int | None = None) -> dict[str, Any]:
    """The data spec ``raw`` (JSON text or a dict) of the file ``source``, every field checked: a dict with
    ``dataset``, ``classes``, ``in_chans``, ``image_size``, ``mean``, ``std``, ``eval_resize`` (fields unknown to
    this version are left out).

    ``in_chans``: the model's input channels, which ``in_chans`` and the lengths of ``mean`` and ``std`` must
    equal. Raises ValueError (or TypeError for a value of the wrong type) naming ``source`` and the field.
    """
    name = f"{source}: {KEY}"
    values = raw
    if isinstance(raw, (str, bytes)):
        try:
            values = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{name} is not JSON ({err})") from None
    if not isinstance(values, Mapping):  # the file's content is at fault: ValueError, as for any unreadable file
        raise ValueError(f"{name} must be a JSON object, got {type(values).__name__}")  # noqa: TRY004
    missing = [k for k in ("classes", "in_chans", "image_size", "mean", "std") if k not in values]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(missing)}")
    chans = check_int(f"{name}.in_chans", values["in_chans"], low=1, high=MAX_CHANNELS)
    if in_chans is not None and chans != in_chans:
        raise ValueError(f"{name}.in_chans is {chans} but the model takes {in_chans} input channel(s)")
    size = check_int(f"{name}.image_size", values["image_size"], low=1, high=MAX_IMAGE_SIZE)
    resize = values.get("eval_resize")
    if resize is not None:
        resize = check_int(f"{name}.eval_resize", resize, low=size, high=MAX_RESIZE)
    dataset = values.get("dataset", "")
    if not isinstance(dataset, str):
        raise ValueError(f"{name}.dataset must be a name, got {dataset!r:.80}")  # noqa: TRY004
    return {
        "dataset": dataset,
        "classes": _classes(values["classes"], name),
        "in_chans": chans,
        "image_size": size,
        "mean": _stats("mean", values["mean"], chans, name, positive=False),
        "std": _stats("std", values["std"], chans, name, positive=True),
        "eval_resize": resize,
    }


def spec_cfg(spec: Mapping[str, Any], input_size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The ``pretrained_cfg`` entries of a checked spec: input size, normalisation (0-1 and 0-255 scales), and the
    resize and crop that ``predict`` applies, in timm's terms (``crop_pct``, ``crop_mode``, ``interpolation``).

    ``input_size``: the model's own, whose leading channel and trailing two sizes are replaced (a clip model's
    frame count in between stays).
    """
    size, resize = spec["image_size"], spec["eval_resize"]
    old = tuple(input_size) if input_size and len(input_size) >= 3 else (0, 0, 0)
    return {
        "input_size": (spec["in_chans"], *old[1:-2], size, size),
        "mean": tuple(spec["mean"]),
        "std": tuple(spec["std"]),
        "mean_255": tuple(255.0 * m for m in spec["mean"]),
        "std_255": tuple(255.0 * s for s in spec["std"]),
        # predict: Resize(eval_resize) + CenterCrop(size), or a resize of both sides to the size (timm's "squash")
        "resize": resize or size,
        "crop_pct": _crop_pct(size, resize) if resize else 1.0,
        "crop_mode": "center" if resize else "squash",
        "interpolation": "bilinear",
        "label_names": tuple(spec["classes"]),
    }


def _crop_pct(size: int, resize: int) -> float:
    """``size / resize`` as the float timm turns back into ``resize`` (``floor(size / crop_pct)``): rounding would
    give ``resize - 1`` for a few sizes (443 of 506)."""
    crop = size / resize
    while math.floor(size / crop) < resize:
        crop = math.nextafter(crop, 0.0)
    return crop


def apply_data_spec(model: nn.Module, raw: str | Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """Check the recorded spec ``raw`` of ``source`` against ``model`` and write it into ``model.pretrained_cfg``
    (in place, so timm's ``default_cfg`` alias follows); returns the checked spec (see :func:`check_data_spec`)."""
    spec = check_data_spec(raw, source, model_in_chans(model))
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        cfg = {}
        setattr(model, "pretrained_cfg", cfg)  # (nn.Module's stubs type attribute assignment for tensors and modules)
    cfg.update(spec_cfg(spec, cfg.get("input_size")))
    return spec


def apply_recorded_preprocessing(model: nn.Module, metadata: Mapping[str, str], source: str | os.PathLike) -> None:
    """:func:`apply_data_spec` when the checkpoint's ``metadata`` records a data spec; nothing otherwise."""
    if KEY in metadata:
        apply_data_spec(model, metadata[KEY], source)


def check_finite(tensors: Mapping[str, Tensor], source: str | os.PathLike) -> None:
    """``ValueError`` naming ``source`` and the tensors when any floating-point value is NaN or infinite: such
    weights come from a diverged run, and a model built on them predicts nothing ("nan%")."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(
            f"{source}: the checkpoint holds NaN or infinite values in {len(bad)} tensor(s) ({fmt_keys(bad)}); "
            "its weights are unusable (did the run that wrote them diverge?)"
        )


def fmt_keys(keys: list[str]) -> str:
    """The first keys, comma-separated, and how many more there are (error and warning messages)."""
    shown = ", ".join(keys[:LIST_LIMIT])
    return shown + (f", ... ({len(keys) - LIST_LIMIT} more)" if len(keys) > LIST_LIMIT else "")
