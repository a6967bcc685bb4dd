"""Helpers shared by the op and layer tests: the backends under test, tensor factories and tolerances."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

import involution  # noqa: F401  (registers torch.ops.involution.*)
from involution.ops import available_backends, output_size
from involution.ops.backends import get_backend
from reference import involution_nd_reference_and_grads

CPU = torch.device("cpu")


def cpu_kernel(event: str) -> tuple[str, str] | None:
    """``(pass, family)`` of a profiler event naming one of the compiled cpu backend's kernels, e.g.
    ``involution_cpu::forward_nchw`` -> ``("forward", "nchw")``, ``involution_cpu::backward_input3d`` ->
    ``("backward_input3d", "ndhwc")``; None for any other event."""
    op = event.removeprefix("involution_cpu::")
    if op == event:
        return None
    for suffix in ("_nchw", "_ncdhw"):
        if op.endswith(suffix):
            return op.removesuffix(suffix), suffix[1:]
    return op, "ndhwc" if op.endswith("3d") else "nhwc"


@contextmanager
def cpu_kernel_calls() -> Iterator[Counter]:
    """Count the compiled cpu backend's kernels run in the block, by ``(pass, family)`` (:func:`cpu_kernel`).

    Read from a profile of the block (every kernel is a dispatcher op, ``torch.ops.involution_cpu.*``), so the
    backend keeps no count of its own; the counter is filled when the block exits."""
    calls: Counter = Counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        yield calls
    calls.update(k for k in map(cpu_kernel, (e.name for e in prof.events())) if k is not None)

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


def dtype_ulp(value: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of ``dtype``'s numbers in the binade of each ``|value|`` (float64), the subnormal spacing below
    the normal range: the gap a result rounded to ``dtype`` near ``value`` is snapped to."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(value.detach().to(torch.float64).abs().clamp_min(info.smallest_normal))
    return torch.ldexp(torch.full_like(value, info.eps, dtype=torch.float64), exponent - 1)


#: Unit roundoff of float32, the accumulator of every low-precision kernel.
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def float32_accumulation_bound(
    expected: Tensor, abs_terms: Tensor, n_terms: int, dtype: torch.dtype, rounding_ulps: float = 0.5
) -> Tensor:
    """Per element, the most a ``dtype`` result can differ from the exact sum ``expected`` (float64, of the already
    rounded inputs) when its products are summed in float32, in any order, and rounded to ``dtype`` once.

    Products of two bfloat16 (8 significand bits) or float16 (11) numbers are exact in float32 (24), so only the
    additions round: the float32 sum is within ``d = gamma_n * sum|terms|`` of ``expected`` (``gamma_n = n u / (1 -
    n u)``, ``u = 2**-24``; ``abs_terms`` is the sum of the products' magnitudes), and the final rounding to
    ``dtype`` adds at most ``rounding_ulps`` ulps of ``dtype`` at ``|expected| + d``: 1/2 for round-to-nearest
    (PyTorch, C++, compiled Triton), 1 for a truncating conversion (Triton's interpreter turns float32 into
    bfloat16 so). The bound ``rounding_ulps * ulp(|expected| + d) + d`` is half an ulp of the output unless the sum
    cancels (d is ~1e-6 of the magnitudes), so a kernel whose partial sums round to ``dtype`` (each addition may
    lose half an ulp of the partial sum) breaks it at some element of a long sum.
    """
    assert dtype in (torch.bfloat16, torch.float16), dtype
    gamma = n_terms * FLOAT32_UNIT_ROUNDOFF / (1 - n_terms * FLOAT32_UNIT_ROUNDOFF)
    slack = gamma * abs_terms.detach().to(torch.float64)
    return dtype_ulp(expected.abs() + slack, dtype) * rounding_ulps + slack


def assert_float32_accumulated(
    actual: Tensor, expected: Tensor, abs_terms: Tensor, n_terms: int, rounding_ulps: float = 0.5, msg: str = ""
) -> None:
    """``actual`` (bfloat16/float16) is ``expected`` (float64) rounded once after a float32 sum of ``n_terms``
    products: within :func:`float32_accumulation_bound` at every element (not a tolerance scaled by max|expected|)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach(), expected.detach()
    bound = float32_accumulation_bound(expected, abs_terms, n_terms, actual.dtype, rounding_ulps)
    excess = (actual.to(torch.float64) - expected).abs() / bound
    worst = int(excess.flatten().argmax())
    assert float(excess.flatten()[worst]) <= 1.0, (
        f"{msg}\n{int((excess > 1).sum())} of {excess.numel()} elements are further from the exact sum than a float32 "
        f"sum of {n_terms} terms rounded once to {actual.dtype} can be; worst: element {worst}, got "
        f"{float(actual.flatten()[worst])}, exact {float(expected.flatten()[worst])}, "
        f"{float(excess.flatten()[worst]):.2f}x the bound {float(bound.flatten()[worst]):.3g}"
    )


def assert_op_accumulates_in_float32(
    results: tuple[Tensor, Tensor, Tensor],
    input: Tensor,
    weight: Tensor,
    grad_output: Tensor,
    geometry: tuple,
    rounding_ulps: float = 0.5,
    msg: str = "",
) -> None:
    """(output, grad_input, grad_weight) in bfloat16/float16 each within :func:`float32_accumulation_bound` of the
    float64 reference of the same (already rounded) ``input``, ``weight`` and ``grad_output``, in 1, 2 or 3
    spatial dimensions; ``geometry`` is (stride, padding, dilation), each an int or one int per dimension.

    Forward and grad_input sum at most prod(kernel) products per element (Kd*Kh*Kw in 3-D: a sum over depth taps
    done in the output dtype breaks the bound), grad_weight C/G; the magnitudes summed are the reference applied
    to the inputs' absolute values."""
    dims = input.dim() - 2
    geo = tuple((v,) * dims if isinstance(v, int) else tuple(v) for v in geometry)
    kernel = weight.shape[2 : 2 + dims]
    n_terms = (math.prod(kernel), math.prod(kernel), input.shape[1] // weight.shape[1])
    exact = involution_nd_reference_and_grads(input, weight, grad_output, *geo)
    magnitudes = involution_nd_reference_and_grads(input.abs(), weight.abs(), grad_output.abs(), *geo)
    for what, got, ref, mag, n in zip(("forward", "grad_input", "grad_weight"), results, exact, magnitudes, n_terms):
        assert_float32_accumulated(got.cpu(), ref, mag, n, rounding_ulps, msg=f"{what} {msg}")


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
