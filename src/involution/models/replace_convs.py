"""Involution anywhere: replace the spatial convolutions of any model by :class:`~involution.Involution2d`.

The RedNet recipe (swap the KxK convolution of every bottleneck for an involution, keep the 1x1 convolutions)
applied to an arbitrary ``nn.Module``:

>>> import torchvision
>>> from involution.models import involutionize
>>> model, names = involutionize(torchvision.models.resnet50(weights=None), return_names=True)
>>> names[:3]
['layer1.0.conv2', 'layer1.1.conv2', 'layer1.2.conv2']

The new layers are freshly initialised: a converted model has to be trained (or fine-tuned), the convolution
weights it replaces cannot be carried over.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..layers.conv_norm_act import LayerFactory
from ..layers.involution import Involution2d

__all__ = ["involutionizable", "involutionize"]

IncludeFilter = Callable[[str, nn.Conv2d], bool] | str | Iterable[str] | None


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def involutionizable(
    conv: nn.Module, kernel_size: int | None = 7, allow_projection: bool = True, min_channels: int = 16
) -> str | None:
    """Why ``conv`` cannot be replaced (a short reason), or ``None`` when :func:`involutionize` would replace it.

    Replaceable: an ``nn.Conv2d`` with a kernel larger than 1x1, ``groups == 1`` or depthwise
    (``groups == in_channels``), "same" padding (``2 * padding == dilation * (kernel - 1)`` in each dimension, or
    ``padding='same'``), so that the output size is ``ceil(H / stride)`` as for the involution, at least
    ``min_channels`` input channels, and ``out_channels == in_channels`` unless ``allow_projection`` (then a 1x1
    projection follows the involution).
    """
    if not isinstance(conv, nn.Conv2d):
        return "not an nn.Conv2d"
    kh, kw = _pair(conv.kernel_size)
    if kh == 1 and kw == 1:
        return "1x1 (pointwise) convolution"
    c_in, c_out = conv.in_channels, conv.out_channels
    if conv.groups not in (1, c_in):
        return f"grouped convolution (groups={conv.groups}), neither dense nor depthwise"
    if c_in < min_channels:
        return f"in_channels {c_in} < min_channels {min_channels}"
    if c_out != c_in and not allow_projection:
        return f"in_channels {c_in} != out_channels {c_out} and allow_projection=False"
    dh, dw = _pair(conv.dilation)
    if isinstance(conv.padding, str):
        if conv.padding != "same":
            return f"padding={conv.padding!r} changes the output size"
        if (kh - 1) * dh % 2 or (kw - 1) * dw % 2:
            return "padding='same' with an even effective kernel (asymmetric padding)"
    else:
        ph, pw = _pair(conv.padding)
        if 2 * ph != dh * (kh - 1) or 2 * pw != dw * (kw - 1):
            return f"padding {(ph, pw)} is not 'same' for kernel {(kh, kw)}, dilation {(dh, dw)}"
    if kernel_size is None and (kh % 2 == 0 or kw % 2 == 0):
        return f"even kernel {(kh, kw)} (an involution kernel must be odd)"
    return None


def _matches(include: IncludeFilter, name: str, conv: nn.Conv2d) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(name, conv))
    patterns = [include] if isinstance(include, str) else list(include)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _named_modules(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """Every submodule with all its names (a shared module has several), in module order."""
    names_of: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name:
            names_of.setdefault(id(mod), (mod, []))[1].append(name)
    return list(names_of.values())


def _involution_like(conv: nn.Conv2d, kernel_size: int | None, **layer_kwargs: Any) -> Involution2d:
    """An involution with ``conv``'s channels, stride, dilation (and kernel size, if ``kernel_size`` is None), on
    its device, in its dtype and train/eval mode."""
    layer = Involution2d(
        conv.in_channels,
        kernel_size=kernel_size if kernel_size is not None else _pair(conv.kernel_size),
        stride=_pair(conv.stride),
        dilation=_pair(conv.dilation),
        out_channels=conv.out_channels,
        **layer_kwargs,
    )
    weight = conv.weight
    if weight.is_floating_point():
        layer = layer.to(device=weight.device, dtype=weight.dtype)
    else:  # pragma: no cover - quantised or otherwise exotic weights
        layer = layer.to(device=weight.device)
    return layer.train(conv.training)


def involutionize(
    model: nn.Module,
    *,
    kernel_size: int | None = 7,
    group_channels: int = 16,
    reduction_ratio: int = 4,
    include: IncludeFilter = None,
    min_channels: int = 16,
    skip_stem: bool = True,
    allow_projection: bool = True,
    norm_layer: LayerFactory | None = nn.BatchNorm2d,
    act_layer: LayerFactory | None = nn.ReLU,
    inplace: bool = False,
    return_names: bool = False,
) -> nn.Module | tuple[nn.Module, list[str]]:
    """Replace the spatial convolutions of ``model`` by :class:`~involution.Involution2d` layers.

    Each replaceable ``nn.Conv2d`` (see :func:`involutionizable`: kernel > 1x1, dense or depthwise, "same"
    padding, ``in_channels >= min_channels``) becomes ``Involution2d(in_channels, kernel_size, stride, dilation,
    group_channels, reduction_ratio, out_channels)`` with the convolution's stride and dilation, so every output
    keeps its shape: ``(N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s))``. Where ``out_channels !=
    in_channels`` the involution ends with its 1x1 projection (``allow_projection=False`` skips such convolutions
    instead). The new layers take the device, dtype and train/eval mode of the convolution they replace; the
    convolution's bias (normally absent, a norm layer follows) and a non-zero ``padding_mode`` are not carried
    over (the involution pads with zeros). 1x1 convolutions,
    transposed convolutions and everything else are left as they are.

    Args:
        model: any module; it is deep-copied first unless ``inplace``.
        kernel_size: K of the involutions (odd; the paper's 7); ``None`` keeps each convolution's own kernel size.
        group_channels: channels per involution group (paper: 16).
        reduction_ratio: the kernel generator's reduction r (paper: 4).
        include: which convolutions may be replaced: ``None`` (all), a callable ``(name, conv) -> bool``, or
            shell-style patterns on the module names (``"layer3.*"``, ``["layer1.*", "layer2.*"]``).
        min_channels: convolutions with fewer input channels are kept (default 16: an image-reading conv never
            qualifies).
        skip_stem: keep the model's first ``nn.Conv2d`` (in module order, normally the stem reading the image).
        allow_projection: replace convolutions that change the channel count too (involution + 1x1 projection).
        norm_layer, act_layer: the kernel generator's normalisation and activation (default BN + ReLU).
        inplace: modify ``model`` itself instead of a copy.
        return_names: also return the names of the replaced modules (in module order).

    Returns:
        the converted model, or ``(model, replaced_names)`` with ``return_names=True``. A convolution registered
        under several names (shared) is replaced by one involution everywhere; all its names are listed.
    """
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be an odd int >= 1 (or None), got {kernel_size}")
    if not inplace:
        model = copy.deepcopy(model)

    stem: nn.Module | None = None
    if skip_stem:
        stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    replaced: list[str] = []
    for conv, names in _named_modules(model):
        if conv is stem or not isinstance(conv, nn.Conv2d):
            continue
        if not any(_matches(include, n, conv) for n in names):
            continue
        if involutionizable(conv, kernel_size, allow_projection, min_channels) is not None:
            continue
        layer = _involution_like(
            conv,
            kernel_size,
            group_channels=group_channels,
            reduction_ratio=reduction_ratio,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        for n in names:
            _set_submodule(model, n, layer)
        replaced.extend(names)
    return (model, replaced) if return_names else model
