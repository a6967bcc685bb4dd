"""The RedNets in timm's registry: with timm (>= 1.0) installed, ``import involution`` makes
``timm.create_model("rednet26")`` ... ``"rednet152"`` and their ``_small`` variants work.

>>> import involution, timm
>>> model = timm.create_model("rednet50", num_classes=10)
>>> weights = dict(file="RedNet50_pretrained.pdparams")           # PaddleClas ImageNet weights, downloaded by you
>>> model = timm.create_model("rednet50", pretrained=True, pretrained_cfg_overlay=weights)
>>> backbone = timm.create_model("rednet50", features_only=True)      # 4 maps, strides 4/8/16/32

Each entry point builds through ``timm.models.build_model_with_cfg`` (so ``features_only``, ``feature_cls``,
``pretrained_cfg_overlay`` behave as for timm's own models) and its model through this library's registry (so
``model_name`` / ``model_kwargs`` are recorded and :func:`~involution.models.save_checkpoint` can rebuild it).

Weights: nothing is downloaded. ``pretrained=True`` needs a file, ``pretrained_cfg_overlay=dict(file=PATH)``,
read by this library's :func:`~involution.models.load_checkpoint` (``custom_load``: the model's
``load_pretrained``), so every format it knows loads (this library's safetensors, official mmcls ``.pth``,
PaddleClas ``.pdparams``, plain state dicts ...) and nothing but tensors and arrays is ever unpickled. A file with another class count loads the body
and re-initialises the classifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from torch import nn

from .rednet import _CARDS, PADDLECLAS_URL, _rednet_cfg
from .registry import model_entrypoint as involution_entrypoint

_TIMM_KEYS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))
FEATURE_INDICES = (0, 1, 2, 3)  # the four stages, reductions 4/8/16/32 (1/2/4/8 for _small)


def _where_weights_are(depth: int, small: bool) -> str:
    if small:
        return "The _small variants have no published weights (train them, or pass a file of your own)"
    return f"ImageNet weights of RedNet-{depth} (PaddleClas): {PADDLECLAS_URL.format(depth=depth)}"


def _timm_cfg(depth: int, small: bool) -> dict[str, Any]:
    """Our pretrained_cfg (:func:`~involution.models.rednet._rednet_cfg`) in timm's fields, with notes."""
    ours = _rednet_cfg(depth, small)
    cfg = {k: v for k, v in ours.items() if k in _TIMM_KEYS}
    notes = [ours["origin"], "no weights are downloaded: pass pretrained_cfg_overlay=dict(file=PATH)"]
    if not small:
        notes.append(f"official ImageNet top-1 {ours['paper_top1']} %, top-5 {ours['paper_top5']} %")
    notes.append(_where_weights_are(depth, small))
    cfg["notes"] = tuple(notes)
    return cfg


def _variant(depth: int, small: bool) -> str:
    return f"rednet{depth}" + ("_small" if small else "")


default_cfgs = generate_default_cfgs(
    {_variant(depth, small): _timm_cfg(depth, small) for depth in _CARDS for small in (False, True)}
)


def _weights_file(name: str, pretrained_cfg: Any, overlay: dict[str, Any]) -> str:
    """The weight file the caller named (in the overlay or a pretrained_cfg); a clear error if there is none."""
    resolved = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    if resolved.file:
        return str(resolved.file)
    depth, small = int(name.removeprefix("rednet").removesuffix("_small")), name.endswith("_small")
    raise RuntimeError(
        f"{name}: pretrained=True needs a weight file: this library downloads nothing. Pass one with "
        f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)); any file "
        f"involution.models.load_checkpoint reads will do. {_where_weights_are(depth, small)}."
    )


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """``model.pretrained_cfg``: a dict on every model of the registry and of timm (nn.Module types no such field)."""
    return cast(dict[str, Any], model.pretrained_cfg)


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``build_model_with_cfg`` over this library's entry point ``name``; see the module docstring."""
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        # custom_load: timm hands the file to model.load_pretrained (our readers) instead of its own torch.load,
        # which knows neither the official layouts nor the other formats. Set here, as timm resets it for a file.
        overlay.update(file=_weights_file(name, pretrained_cfg, overlay), custom_load=True)
    ours: dict[str, Any] = {}

    def build(**model_kwargs: Any) -> nn.Module:
        model = involution_entrypoint(name)(**model_kwargs)
        ours.update(_pretrained_cfg(model))  # before timm replaces it
        return model

    model = build_model_with_cfg(
        build,
        name,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        feature_cfg={"out_indices": FEATURE_INDICES},
        **kwargs,
    )
    # timm replaced our pretrained_cfg by its fields; keep ours beside them (resize, mean_255 ..., the model card)
    for key, value in ours.items():
        if key not in _TIMM_KEYS:
            _pretrained_cfg(model).setdefault(key, value)
    return model


@register_model
def rednet26(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-26 (:func:`involution.models.rednet.rednet26`)."""
    return _create("rednet26", pretrained, kwargs)


@register_model
def rednet38(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-38 (:func:`involution.models.rednet.rednet38`)."""
    return _create("rednet38", pretrained, kwargs)


@register_model
def rednet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-50 (:func:`involution.models.rednet.rednet50`)."""
    return _create("rednet50", pretrained, kwargs)


@register_model
def rednet101(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-101 (:func:`involution.models.rednet.rednet101`)."""
    return _create("rednet101", pretrained, kwargs)


@register_model
def rednet152(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-152 (:func:`involution.models.rednet.rednet152`)."""
    return _create("rednet152", pretrained, kwargs)


@register_model
def rednet26_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-26 for 8x8-32x32 images (:func:`involution.models.rednet.rednet26_small`)."""
    return _create("rednet26_small", pretrained, kwargs)


@register_model
def rednet38_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-38 for 8x8-32x32 images (:func:`involution.models.rednet.rednet38_small`)."""
    return _create("rednet38_small", pretrained, kwargs)


@register_model
def rednet50_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-50 for 8x8-32x32 images (:func:`involution.models.rednet.rednet50_small`)."""
    return _create("rednet50_small", pretrained, kwargs)


@register_model
def rednet101_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-101 for 8x8-32x32 images (:func:`involution.models.rednet.rednet101_small`)."""
    return _create("rednet101_small", pretrained, kwargs)


@register_model
def rednet152_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """RedNet-152 for 8x8-32x32 images (:func:`involution.models.rednet.rednet152_small`)."""
    return _create("rednet152_small", pretrained, kwargs)
