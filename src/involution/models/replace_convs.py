"""Involution anywhere: replace the spatial convolutions of any model by involutions (``nn.Conv1d`` by
:class:`~involution.Involution1d`, ``nn.Conv2d`` by :class:`~involution.Involution2d`, ``nn.Conv3d`` by
:class:`~involution.Involution3d`).

The RedNet recipe (swap the KxK convolution of every bottleneck for an involution, keep the 1x1 convolutions)
applied to an arbitrary ``nn.Module``:

>>> import torchvision
>>> from involution.models import involutionize
>>> model, names = involutionize(torchvision.models.resnet50(weights=None), return_names=True)
>>> names[:3]
['layer1.0.conv2', 'layer1.1.conv2', 'layer1.2.conv2']

Video networks too: ``involutionize(torchvision.models.video.r3d_18(), kernel_size=3)`` gives a 3-D involution
network (``kernel_size=None`` keeps each convolution's own window).

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
from ..layers.involution import BATCH_NORM, Involution1d, Involution2d, Involution3d

__all__ = ["involutionizable", "involutionize"]

IncludeFilter = Callable[[str, nn.Module], bool] | str | Iterable[str] | None
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
_INVOLUTIONS = {1: Involution1d, 2: Involution2d, 3: Involution3d}


def _dims(conv: _Conv) -> int:
    return len(conv.kernel_size)


def _tuple(v: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (v,) * dims if isinstance(v, int) else tuple(int(i) for i in v)


def involutionizable(
    conv: nn.Module, kernel_size: int | None = 7, allow_projection: bool = True, min_channels: int = 16
) -> str | None:
    """Why ``conv`` cannot be replaced (a short reason), or ``None`` when :func:`involutionize` would replace it.

    Replaceable: an ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` with a kernel larger than 1, ``groups == 1`` or
    depthwise (``groups == in_channels``), "same" padding (``2 * padding == dilation * (kernel - 1)`` in each
    dimension, or ``padding='same'``), so that the output size is ``ceil(size / stride)`` as for the involution, at
    least ``min_channels`` input channels, and ``out_channels == in_channels`` unless ``allow_projection`` (then a
    1x1 projection follows the involution).
    """
    if not isinstance(conv, _CONVS):
        return "not an nn.Conv1d, nn.Conv2d or nn.Conv3d"
    dims = _dims(conv)
    kernel, dilation = _tuple(conv.kernel_size, dims), _tuple(conv.dilation, dims)
    if max(kernel) == 1:
        return "1x1 (pointwise) convolution"
    c_in, c_out = conv.in_channels, conv.out_channels
    if conv.groups not in (1, c_in):
        return f"grouped convolution (groups={conv.groups}), neither dense nor depthwise"
    if c_in < min_channels:
        return f"in_channels {c_in} < min_channels {min_channels}"
    if c_out != c_in and not allow_projection:
        return f"in_channels {c_in} != out_channels {c_out} and allow_projection=False"
    if isinstance(conv.padding, str):
        if conv.padding != "same":
            return f"padding={conv.padding!r} changes the output size"
        if any((k - 1) * d % 2 for k, d in zip(kernel, dilation)):
            return "padding='same' with an even effective kernel (asymmetric padding)"
    else:
        padding = _tuple(conv.padding, dims)
        if any(2 * p != d * (k - 1) for p, k, d in zip(padding, kernel, dilation)):
            return f"padding {padding} is not 'same' for kernel {kernel}, dilation {dilation}"
    if kernel_size is None and any(k % 2 == 0 for k in kernel):
        return f"even kernel {kernel} (an involution kernel must be odd)"
    return None


def _matches(include: IncludeFilter, name: str, conv: nn.Module) -> bool:
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


def _involution_like(conv: _Conv, kernel_size: int | None, **layer_kwargs: Any) -> nn.Module:
    """An involution of ``conv``'s dimension with its channels, stride, dilation (and kernel size, if
    ``kernel_size`` is None), on its device, in its dtype and train/eval mode."""
    dims = _dims(conv)
    layer = _INVOLUTIONS[dims](
        conv.in_channels,
        kernel_size=kernel_size if kernel_size is not None else _tuple(conv.kernel_size, dims),
        stride=_tuple(conv.stride, dims),
        dilation=_tuple(conv.dilation, dims),
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
    norm_layer: LayerFactory | str | None = BATCH_NORM,
    act_layer: LayerFactory | None = nn.ReLU,
    inplace: bool = False,
    return_names: bool = False,
) -> nn.Module | tuple[nn.Module, list[str]]:
    """Replace the spatial convolutions of ``model`` by involution layers of the same dimension.

    Each replaceable ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` (see :func:`involutionizable`: kernel > 1, dense
    or depthwise, "same" padding, ``in_channels >= min_channels``) becomes ``Involution{1,2,3}d(in_channels,
    kernel_size, stride, dilation, group_channels, reduction_ratio, out_channels)`` with the convolution's stride
    and dilation, so every output keeps its shape: ``(N, C_in, *size) -> (N, C_out, *ceil(size / s))``. Where
    ``out_channels != in_channels`` the involution ends with its 1x1 projection (``allow_projection=False`` skips such convolutions
    instead). The new layers take the device, dtype and train/eval mode of the convolution they replace; the
    convolution's bias (normally absent, a norm layer follows) and a non-zero ``padding_mode`` are not carried
    over (the involution pads with zeros). 1x1 convolutions,
    transposed convolutions and everything else are left as they are.

    Args:
        model: any module; it is deep-copied first unless ``inplace``.
        kernel_size: K of the involutions (odd; the paper's 7 for images); ``None`` keeps each convolution's own
            kernel size (for video networks, where 7x7x7 windows would hold 343 taps, pass 3 or ``None``).
        group_channels: channels per involution group (paper: 16).
        reduction_ratio: the kernel generator's reduction r (paper: 4).
        include: which convolutions may be replaced: ``None`` (all), a callable ``(name, conv) -> bool``, or
            shell-style patterns on the module names (``"layer3.*"``, ``["layer1.*", "layer2.*"]``).
        min_channels: convolutions with fewer input channels are kept (default 16: an image-reading conv never
            qualifies).
        skip_stem: keep the model's first convolution (in module order, normally the stem reading the input).
        allow_projection: replace convolutions that change the channel count too (involution + 1x1 projection).
        norm_layer, act_layer: the kernel generator's normalisation and activation (default: the BatchNorm of
            the convolution's dimension, and ReLU).
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
        stem = next((m for m in model.modules() if isinstance(m, _CONVS)), None)
    replaced: list[str] = []
    for conv, names in _named_modules(model):
        if conv is stem or not isinstance(conv, _CONVS):
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
