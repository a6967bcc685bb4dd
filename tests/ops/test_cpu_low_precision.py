"""The compiled backend runs bfloat16/float16 natively (issue 28): the tensors are read in their own dtype and the
results written in place, with no float32 copy of anything and no scratch output copied back, in both kernel
families, forward and both gradients. (That the sums are float32 ones rounded once is checked in
test_forward_backward.py::test_low_precision_accumulates_in_float32.)"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import involution
from involution.ops import use_backend
from op_helpers import CPU_BACKENDS, assert_matches_reference, cpu_kernel, is_channels_last, make_case
from reference import involution2d_reference, reference_grads
from test_cpu_nchw import _generator_weight, _ran

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the compiled cpu backend is not available here")

#: What a dtype conversion, a layout copy or a scratch output copied back shows up as in a profile.
COPIES = {"aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone"}

CASE = dict(n=2, c=32, g=2, kernel=(7, 7), hw=(9, 12), stride=(1, 1), padding=(3, 3), dilation=(1, 1))


def _profiled_op_and_grads(x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor, geo: tuple) -> tuple[set, tuple]:
    """The aten ops run by one op call and its two gradients on the cpu backend, and (out, grad_input, grad_weight)."""
    with use_backend("cpu"), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = involution.involution2d(x, w, *geo)
        gx, gw = torch.autograd.grad(out, (x, w), gy)
    return {e.name for e in prof.events()}, (out, gx, gw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("family", ["nhwc", "nchw"])
def test_low_precision_runs_without_copies(family: str, dtype: torch.dtype) -> None:
    """channels_last input with a pixel-major weight (a channels_last generator's) runs the NHWC kernels, NCHW input
    with a contiguous weight the NCHW kernels: neither converts nor copies a tensor, and the results are right."""
    gen = torch.Generator().manual_seed(11)
    x0, w0 = make_case(**CASE, dtype=dtype, generator=gen)
    geo = (CASE["stride"], CASE["padding"], CASE["dilation"])
    fmt = torch.channels_last if family == "nhwc" else torch.contiguous_format
    x = x0.contiguous(memory_format=fmt).requires_grad_()
    w = _generator_weight(w0)[1] if family == "nhwc" else w0.clone().requires_grad_()
    gy = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)

    ran, (out, gx, gw) = _profiled_op_and_grads(x, w, gy, geo)
    kernels = {cpu_kernel(name): 1 for name in ran}  # the same profile tells which family ran
    assert _ran(kernels, family) == {"forward", "backward_input", "backward_weight"}, sorted(ran)
    assert not ran & COPIES, f"copies in a {dtype} {family} op call: {sorted(ran & COPIES)}"

    assert out.dtype == gx.dtype == gw.dtype == dtype
    assert is_channels_last(out) == is_channels_last(gx) == (family == "nhwc") and gw.stride() == w.stride()
    info = f"{family} {dtype}"
    assert_matches_reference(out, involution2d_reference(x0, w0, *geo), msg=f"forward {info}")
    ref_gx, ref_gw = reference_grads(x0, w0, gy, *geo)
    assert_matches_reference(gx, ref_gx, msg=f"grad_input {info}")
    assert_matches_reference(gw, ref_gw, msg=f"grad_weight {info}")


def test_profile_sees_the_copies_it_looks_for() -> None:
    """The check above can fail: a weight in the other family's layout is copied once, and the profile shows it."""
    gen = torch.Generator().manual_seed(12)
    x0, w0 = make_case(**CASE, dtype=torch.bfloat16, generator=gen)
    x = x0.contiguous(memory_format=torch.channels_last)
    with use_backend("cpu"), profile(activities=[ProfilerActivity.CPU]) as prof:
        involution.involution2d(x, w0, 1, 3)  # a contiguous weight: the NHWC kernels want it pixel-major
    assert {e.name for e in prof.events()} & COPIES
