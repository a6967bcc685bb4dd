"""Argument normalisation, validation and output allocation shared by the op, its fake impl and every backend.

Everything here works on FakeTensors and SymInts too, so the same rules hold in eager mode, under
``torch.compile`` and under ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Pair = tuple[int, int]
IntOrPair = int | Sequence[int]

#: The dtypes the op takes.
FLOATING_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Turn an int or a length-``n`` sequence of ints into an ``n``-tuple, naming ``name`` on error."""
    # the common cases first, at the cost of a type check (bool is not `int` here, so it goes on to the error)
    if type(value) is int:
        return (value,) * n
    if type(value) is tuple and len(value) == n and all(type(v) is int for v in value):
        return value
    what = {1: "an int", 2: "an int or a pair of ints"}.get(n, f"an int or {n} ints")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got a bool ({value!r})")
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, Sequence) and len(value) == n and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name} must be {what}, got {value!r}")


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of one spatial dimension, as for a convolution: floor((H + 2p - d(K-1) - 1) / s) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def is_channels_last(t: Tensor) -> bool:
    """True when a 4-D tensor is laid out NHWC (and not also plain contiguous, as for C == 1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def empty_features(ref: Tensor, shape: Sequence[int]) -> Tensor:
    """An uninitialised ``(N, C, H, W)`` tensor laid out like ``ref`` (NHWC stays NHWC, anything else NCHW)."""
    fmt = torch.channels_last if is_channels_last(ref) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=ref.dtype, device=ref.device, memory_format=fmt)


def is_channels_last_3d(t: Tensor) -> bool:
    """True when a 5-D tensor is laid out NDHWC (and not also plain contiguous, as for C == 1)."""
    return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def empty_volumes(ref: Tensor, shape: Sequence[int]) -> Tensor:
    """An uninitialised ``(N, C, D, H, W)`` tensor laid out like ``ref`` (NDHWC stays NDHWC, anything else NCDHW)."""
    fmt = torch.channels_last_3d if is_channels_last_3d(ref) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=ref.dtype, device=ref.device, memory_format=fmt)


def empty_weight_grad(weight: Tensor) -> Tensor:
    """An uninitialised gradient for ``weight``, keeping its strides when they are dense (e.g. a NHWC generator)."""
    return torch.empty_like(weight)


def autocast_dtype_of(dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor of ``dtype`` has once autocast (to ``autocast_dtype``, None when off) has cast it.

    As for native ops, float64 is never lowered."""
    if autocast_dtype is None or dtype == torch.float64 or not dtype.is_floating_point:
        return dtype
    return autocast_dtype


#: How the spatial dimensions of 1-, 2- and 3-D involutions are named in messages.
SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _layouts(dims: int) -> tuple[str, str]:
    """``(input, weight)`` layouts of a ``dims``-D involution for messages, e.g. ``(N, C, H, W)``."""
    names = SPATIAL_NAMES[dims]
    kernel = ("K",) if dims == 1 else tuple(f"K{d.lower()}" for d in names)
    return f"(N, C, {', '.join(names)})", f"(N, G, {', '.join(kernel)}, {', '.join(n + 'o' for n in names)})"


def check_involution_args(
    input: Tensor,
    weight: Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    autocast_dtype: torch.dtype | None = None,
) -> tuple[int, ...]:
    """Validate the arguments of a ``d``-D involution (``d = len(stride)``: 1, 2 or 3); return the output size.

    ``autocast_dtype`` is the autocast dtype in effect (None when autocast is off): dtypes are compared as the op
    will see them after autocast. Raises TypeError or ValueError naming the argument at fault and what was expected.
    """
    # Called on every op call: messages (and the layouts they name) are only built when one is raised.
    dims = len(stride)
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOATING_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float32, float64, bfloat16 or float16), got {t.dtype}"
            )
    if input.dim() != 2 + dims:
        raise ValueError(
            f"input must be {2 + dims}-D {_layouts(dims)[0]}, got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    if weight.dim() != 2 + 2 * dims:
        raise ValueError(
            f"weight must be {2 + 2 * dims}-D {_layouts(dims)[1]}, got {weight.dim()}-D with shape "
            f"{tuple(weight.shape)}"
        )
    if input.dtype != weight.dtype and (
        autocast_dtype_of(input.dtype, autocast_dtype) != autocast_dtype_of(weight.dtype, autocast_dtype)
    ):
        raise TypeError(
            f"input and weight must have the same dtype, got input {input.dtype} and weight {weight.dtype} "
            "(under autocast both are cast for you)"
        )
    if input.device != weight.device:
        raise ValueError(f"input and weight must be on the same device, got {input.device} and {weight.device}")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        for name, values, low in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0)):
            if min(values) < low:
                raise ValueError(f"{name} must be >= {low}, got {_shown(values)}")

    n, c, *size = input.shape
    wn, g, *rest = weight.shape
    kernel, wsize = tuple(rest[:dims]), tuple(rest[dims:])
    if wn != n:
        raise ValueError(f"weight's batch size {wn} does not match input's {n} (weight is {_layouts(dims)[1]})")
    if g < 1 or c % g != 0:
        raise ValueError(f"input channels C={c} must be divisible by the weight's group count G={g}")
    if min(kernel) < 1:
        raise ValueError(f"kernel size must be >= 1, got weight kernel dims {_shown(kernel)}")
    out = tuple([output_size(*args) for args in zip(size, kernel, stride, padding, dilation)])
    if min(out) < 1:
        raise ValueError(
            f"input of spatial size {_shown(size)} is too small for kernel {_shown(kernel)} with padding "
            f"{_shown(padding)} and dilation {_shown(dilation)}: the output would be {_shown(out)}"
        )
    if wsize != out:
        raise ValueError(
            f"weight's spatial size {_shown(wsize)} must equal the output size {_shown(out)} given input "
            f"{_shown(size)}, kernel {_shown(kernel)}, stride {_shown(stride)}, padding {_shown(padding)}, "
            f"dilation {_shown(dilation)}"
        )
    return out


def _shown(values: Sequence[int]) -> str:
    """A size for messages: ``(3, 3)``, and ``3`` rather than ``(3,)`` in one dimension."""
    values = tuple(int(v) for v in values)
    return str(values[0]) if len(values) == 1 else str(values)


def active_autocast_dtype(t: object) -> torch.dtype | None:
    """The autocast dtype in effect for ``t``'s device (CPU or CUDA), None when autocast is off there."""
    if isinstance(t, Tensor) and t.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return None


def op_arguments(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    dims: int,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """What every public involution op does first: ``stride``, ``padding``, ``dilation`` as ``dims``-tuples,
    validated against the tensors as autocast will hand them over; returns them and the output size."""
    stride_, padding_, dilation_ = ntuple(stride, dims, "stride"), ntuple(padding, dims, "padding"), ntuple(
        dilation, dims, "dilation"
    )
    out_size = check_involution_args(input, weight, stride_, padding_, dilation_, active_autocast_dtype(input))
    return stride_, padding_, dilation_, out_size
