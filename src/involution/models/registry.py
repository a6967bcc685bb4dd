"""timm-style model registry: ``@register_model`` entry points, :func:`create_model`, :func:`list_models`.

>>> from involution.models import create_model, list_models
>>> list_models("rednet*")[:3]
['rednet101', 'rednet101_small', 'rednet152']
>>> model = create_model("rednet26", num_classes=10)
>>> backbone = create_model("rednet50", features_only=True, out_indices=(1, 2, 3))
>>> backbone.feature_info.channels()
[512, 1024, 2048]
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
import json
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from torch import nn

from .._checks import check_flag
from .checkpoint import FORMAT, LoadReport, apply_state_dict, load_checkpoint, read_checkpoint
from .checkpoint_checks import apply_recorded_preprocessing

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_MODULES: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])
M = TypeVar("M", bound=nn.Module)

# Normalisation of the official mmcls pipelines (0-255 pixel scale, applied after BGR -> RGB), and the same
# numbers on the 0-1 scale of ``ToTensor`` (timm's convention for ``mean``/``std``).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_cfg(**overrides: Any) -> dict[str, Any]:
    """The pretrained_cfg defaults of an ImageNet classifier (the official mmcls evaluation pipeline).

    Keys: ``input_size`` (C, H, W), ``mean``/``std`` on the 0-1 pixel scale, ``mean_255``/``std_255`` the same on
    the 0-255 scale (as in mmcls configs), ``to_rgb`` (inputs are RGB), ``resize`` (shorter side before the crop),
    ``crop_pct`` (crop / resize), ``crop_mode``, ``interpolation``, ``num_classes``, ``first_conv``, ``classifier``,
    ``pool_size`` (last map at input_size), plus model-card fields added per model.
    """
    cfg: dict[str, Any] = {
        "input_size": (3, 224, 224),
        "min_input_size": (3, 32, 32),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "mean_255": IMAGENET_MEAN_255,
        "std_255": IMAGENET_STD_255,
        "to_rgb": True,
        "resize": 256,
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "num_classes": 1000,
        "pool_size": (7, 7),
        "first_conv": "conv1",
        "classifier": "fc",
    }
    cfg.update(overrides)
    return cfg


def small_cfg(**overrides: Any) -> dict[str, Any]:
    """pretrained_cfg defaults of the ``*_small`` variants (32x32 inputs, no resize or crop)."""
    return default_cfg(
        input_size=(3, 32, 32),
        min_input_size=(3, 8, 8),
        resize=32,
        crop_pct=1.0,
        pool_size=(4, 4),
        **overrides,
    )


def register_model(fn: F) -> F:
    """Register a model entry point under its function name; ``create_model(name)`` then calls it."""
    name = fn.__name__
    if name in _ENTRYPOINTS and _ENTRYPOINTS[name] is not fn:
        raise ValueError(f"a model named {name!r} is already registered (by {_MODULES[name]})")
    _ENTRYPOINTS[name] = fn
    _MODULES[name] = fn.__module__
    return fn


def list_models(filter: str | Iterable[str] = "", module: str = "") -> list[str]:
    """Registered model names, sorted; ``filter`` is a shell-style pattern (or several), ``module`` e.g. 'rednet'."""
    names = sorted(_ENTRYPOINTS)
    if filter:
        patterns = [filter] if isinstance(filter, str) else list(filter)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if module:
        names = [n for n in names if _MODULES[n].rsplit(".", 1)[-1] == module]
    return names


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered builder of ``name``; an unknown name raises ``ValueError`` listing the close matches."""
    if name not in _ENTRYPOINTS:
        close = difflib.get_close_matches(name, _ENTRYPOINTS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}")
    return _ENTRYPOINTS[name]


def channel_stats(stats: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel normalisation for ``in_chans`` inputs: ``stats`` (RGB values, or a model's own per-channel ones)
    when they are that many, else their mean for every channel."""
    return tuple(stats) if len(stats) == in_chans else (round(sum(stats) / len(stats), 4),) * in_chans


def check_placement(device: Any, dtype: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """The ``device`` and ``dtype`` keywords of a model builder, checked: a :class:`torch.device` (or what it
    accepts: ``"cuda:0"``, ``"meta"`` ...) or None, and a floating-point :class:`torch.dtype` (or its name,
    ``"bfloat16"``, as ``--model-kwargs`` JSON gives it) or None."""
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch.device or a device string such as 'cpu', 'cuda:0' or "
                             f"'meta', got {device!r} ({err})") from None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.bfloat16, "
                         f"torch.float16, torch.float64) or its name, got {dtype!r}")
    return device, dtype


def place_channels_last(model: nn.Module) -> nn.Module:
    """Lay out ``model``'s 4-D parameters and buffers channels_last (NHWC), in place; returns ``model``.

    Convolutions with NHWC weights give NHWC outputs whatever their input's layout, so an NCHW batch is converted
    once, by the first convolution, and every feature map after it stays NHWC (values unchanged, to float32
    rounding). The builder applies it (``channels_last=True``); the model itself never picks a layout."""
    if any(t.dim() == 5 for t in model.parameters()):
        raise ValueError("channels_last lays out image models (4-D weights); clip models run channels_last_3d "
                         "through the video trainer's channels_last option")
    return model.to(memory_format=torch.channels_last)


def build_model(
    model_cls: Callable[..., M],
    name: str,
    model_args: dict[str, Any],
    kwargs: dict[str, Any],
    pretrained_cfg: dict[str, Any],
    channels_last: bool = False,
) -> M:
    """Build ``model_cls(**model_args, **kwargs)`` and attach ``model_name``, ``model_kwargs``, ``pretrained_cfg``.

    ``model_args`` are the variant's fixed arguments (stage depths ...); ``kwargs`` the caller's, recorded in
    ``model.model_kwargs`` so that :func:`involution.models.save_checkpoint` can rebuild the same model.

    ``kwargs`` may also hold ``device`` and ``dtype`` (timm's factory keywords; :func:`check_placement`), which are
    not recorded: every parameter and buffer is created on ``device`` (the model is built under
    ``with torch.device(device)``, so ``"meta"`` allocates nothing), and the floating-point ones are then cast to
    ``dtype`` (initialised in float32 first, so one seed gives the same weights, rounded, in every dtype; integer
    buffers such as BatchNorm's ``num_batches_tracked`` stay int64).

    ``kwargs`` may hold ``channels_last`` too (not recorded either): the memory layout of the model's 4-D
    parameters (:func:`place_channels_last`); ``channels_last`` here is the variant's default (the RedNets'
    involution kernels and oneDNN's convolutions are fastest in NHWC, so RedNets default to it).
    """
    kwargs = dict(kwargs)
    device, dtype = check_placement(kwargs.pop("device", None), kwargs.pop("dtype", None))
    # the one place a model's layout is decided (trainers may convert it again); None: the variant's default
    layout = kwargs.pop("channels_last", None)
    layout = channels_last if layout is None else check_flag("channels_last", layout)
    fixed = set(model_args) & set(kwargs)
    if fixed:
        raise TypeError(f"{name} fixes {sorted(fixed)}; pass them to the model class instead")
    with torch.device(device) if device is not None else nullcontext():
        model = model_cls(**model_args, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    if layout:
        place_channels_last(model)
    cfg = copy.deepcopy(pretrained_cfg)
    cfg["architecture"] = name
    cfg["num_classes"] = getattr(model, "num_classes", cfg.get("num_classes"))
    cfg["first_conv"] = getattr(model, "first_conv", cfg.get("first_conv"))
    in_chans = kwargs.get("in_chans", getattr(model, "in_chans", None)) or cfg.get("input_size", (3,))[0]
    if "input_size" in cfg and in_chans != cfg["input_size"][0]:
        for key in ("input_size", "min_input_size"):
            if key in cfg:
                cfg[key] = (in_chans, *cfg[key][1:])
        for key in ("mean", "std", "mean_255", "std_255"):
            if key in cfg:
                cfg[key] = channel_stats(cfg[key], in_chans)
    # setattr: nn.Module's stubs type attribute assignment for tensors and modules only
    setattr(model, "pretrained_cfg", cfg)
    setattr(model, "default_cfg", cfg)  # timm's older name
    setattr(model, "model_name", name)
    setattr(model, "model_kwargs", kwargs)
    return model


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    checkpoint: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading a checkpoint into it.

    Args:
        name: a name from :func:`list_models`, e.g. ``"rednet50"``, ``"resnet26_small"``.
        num_classes: classifier outputs (0: no classifier; ``forward`` gives pooled features); None: the
            model's own default (1000 for the ImageNet classifiers, 80 object classes for the COCO detectors,
            19 (Cityscapes) for the segmentors).
        in_chans: input channels (the clip models' ``pretrained_cfg`` follows: pass 1 for grey clips).
        features_only: build a backbone returning the stage maps (``feature_info`` describes them).
        out_indices: the stages (0..3, strides 4/8/16/32) returned when ``features_only``.
        checkpoint: a file to load: official mmcls ``.pth``, a plain state dict, or this library's safetensors
            (see :func:`involution.models.load_checkpoint`). A different class count keeps the backbone and
            re-initialises the classifier with a warning. Entry points that take a ``checkpoint`` argument
            themselves (the detectors, whose files have other layouts) are given it instead.
        **kwargs: passed to the model class (``width``, ``stem_kernel_size``, ``grad_checkpointing``,
            ``drop_rate``, ``zero_init_residual`` ...), except ``device`` and ``dtype``, which say where the
            parameters and buffers are created and in which floating-point dtype, and ``channels_last``, the
            memory layout of the 4-D parameters (default: the variant's, True for the RedNets: an NCHW input is
            then converted once, by the first convolution, and the network runs NHWC; see :func:`build_model`).

    Raises:
        ValueError: unknown name (with close matches), unreadable checkpoint (naming the path).
        RuntimeError: a checkpoint of another architecture (listing missing, unexpected and mismatched keys).
    """
    entry = model_entrypoint(name)
    kwargs = dict(kwargs, in_chans=in_chans)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if features_only:
        kwargs.update(features_only=True, out_indices=tuple(out_indices))
    if checkpoint is not None and "checkpoint" in inspect.signature(entry).parameters:
        return entry(**kwargs, checkpoint=checkpoint)
    model = entry(**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild the model recorded in one of this library's checkpoints and load its weights.

    ``overrides`` replace recorded constructor arguments (e.g. ``num_classes=10`` re-initialises the classifier,
    ``grad_checkpointing=True``). The model's ``pretrained_cfg`` gives the input size, mean and std the run
    trained with where the file records them (its ``data_spec``), not the model family's defaults.
    """
    state_dict, metadata = read_checkpoint(path)
    name = metadata.get("model") if metadata.get("format") == FORMAT else None
    if not name:
        raise ValueError(
            f"{path}: not one of this library's checkpoints (no model name recorded); "
            "use create_model(name, checkpoint=path)"
        )
    try:
        kwargs = json.loads(metadata.get("model_kwargs", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: model_kwargs metadata is not JSON ({err})") from None
    model = create_model(name, **{**kwargs, **overrides})
    if callable(getattr(type(model), "apply_state_dict", None)):  # models with several heads check keys themselves
        applies_itself: Callable[..., LoadReport] = getattr(model, "apply_state_dict")
        applies_itself(state_dict, source=str(path))
    else:
        apply_state_dict(model, state_dict, source=str(path))
    apply_recorded_preprocessing(model, metadata, path)
    return model
