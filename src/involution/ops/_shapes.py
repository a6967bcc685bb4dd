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


def pair(value: IntOrPair, name: str) -> Pair:
    """Turn an int or a length-2 sequence of ints into a ``(h, w)`` tuple, naming ``name`` on error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got a bool ({value!r})")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


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


def empty_weight_grad(weight: Tensor) -> Tensor:
    """An uninitialised gradient for ``weight``, keeping its strides when they are dense (e.g. a NHWC generator)."""
    return torch.empty_like(weight)


def autocast_dtype_of(dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor of ``dtype`` has once autocast (to ``autocast_dtype``, None when off) has cast it.

    As for native ops, float64 is never lowered."""
    if autocast_dtype is None or dtype == torch.float64 or not dtype.is_floating_point:
        return dtype
    return autocast_dtype


def check_involution_args(
    input: Tensor,
    weight: Tensor,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[int, int]:
    """Validate the arguments of :func:`involution2d`; return the output size ``(Ho, Wo)``.

    ``autocast_dtype`` is the autocast dtype in effect (None when autocast is off): dtypes are compared as the op
    will see them after autocast. Raises TypeError or ValueError naming the argument at fault and what was expected.
    """
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOATING_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float32, float64, bfloat16 or float16), got {t.dtype}"
            )
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got {input.dim()}-D with shape {tuple(input.shape)}")
    if weight.dim() != 6:
        raise ValueError(
            f"weight must be 6-D (N, G, Kh, Kw, Ho, Wo), got {weight.dim()}-D with shape {tuple(weight.shape)}"
        )
    if autocast_dtype_of(input.dtype, autocast_dtype) != autocast_dtype_of(weight.dtype, autocast_dtype):
        raise TypeError(
            f"input and weight must have the same dtype, got input {input.dtype} and weight {weight.dtype} "
            "(under autocast both are cast for you)"
        )
    if input.device != weight.device:
        raise ValueError(f"input and weight must be on the same device, got {input.device} and {weight.device}")
    for name, (a, b), low in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0)):
        if a < low or b < low:
            raise ValueError(f"{name} must be >= {low}, got {(a, b)}")

    n, c, h, w = input.shape
    wn, g, kh, kw, wh, ww = weight.shape
    if wn != n:
        raise ValueError(f"weight's batch size {wn} does not match input's {n} (weight is (N, G, Kh, Kw, Ho, Wo))")
    if g < 1 or c % g != 0:
        raise ValueError(f"input channels C={c} must be divisible by the weight's group count G={g}")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got weight kernel dims {(kh, kw)}")
    ho = output_size(h, kh, stride[0], padding[0], dilation[0])
    wo = output_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input of spatial size {(h, w)} is too small for kernel {(kh, kw)} with padding {padding} "
            f"and dilation {dilation}: the output would be {(ho, wo)}"
        )
    if (wh, ww) != (ho, wo):
        raise ValueError(
            f"weight's spatial size {(wh, ww)} must equal the output size {(ho, wo)} given input {(h, w)}, "
            f"kernel {(kh, kw)}, stride {stride}, padding {padding}, dilation {dilation}"
        )
    return ho, wo
