"""Helpers shared by the op and layer tests: the backends under test, tensor factories and tolerances."""

from __future__ import annotations

import torch
from torch import Tensor

import involution  # noqa: F401  (registers torch.ops.involution.*)
from involution.ops import available_backends, output_size
from involution.ops.backends import get_backend

CPU = torch.device("cpu")

#: Every available backend that runs CPU tensors: "torch" always, "cpu" once the compiled backend builds here.
CPU_BACKENDS: list[str] = [name for name in available_backends() if get_backend(name).supports(CPU)]

#: The other CPU backends, each compared against the pure-PyTorch "torch" backend.
NON_TORCH_CPU_BACKENDS: list[str] = [name for name in CPU_BACKENDS if name != "torch"]

#: (rtol, atol) against the float64 reference, per dtype; atol is scaled by the reference's magnitude.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_matches_reference(actual: Tensor, expected: Tensor, dtype: torch.dtype | None = None, msg: str = "") -> None:
    """``actual`` (any dtype) equals the float64 ``expected`` within the tolerance of ``dtype``."""
    dtype = dtype or actual.dtype
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(
        actual.detach().to(torch.float64), expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{msg}\n{m}"
    )


def make_case(
    n: int,
    c: int,
    g: int,
    kernel: tuple[int, int],
    hw: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random contiguous ``input`` (N, C, H, W) and ``weight`` (N, G, Kh, Kw, Ho, Wo) for one geometry."""
    ho = output_size(hw[0], kernel[0], stride[0], padding[0], dilation[0])
    wo = output_size(hw[1], kernel[1], stride[1], padding[1], dilation[1])
    assert ho >= 1 and wo >= 1, (ho, wo)
    x = torch.randn(n, c, *hw, generator=generator, dtype=torch.float64).to(dtype)
    w = torch.randn(n, g, *kernel, ho, wo, generator=generator, dtype=torch.float64).to(dtype)
    return x, w


def is_channels_last(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
