"""The 3-D op ``involution::involution3d`` and the native CPU kernels behind it, against the float64 reference.

Forward and both gradients for many geometries (strides, paddings, dilations per axis, non-cubic kernels, C/G not a
multiple of the vector width), both feature layouts (NCDHW, NDHWC) and both weight layouts (contiguous, the view of a
channels_last_3d generator output); float32/float64 exact to rounding, bfloat16/float16 within the float32
accumulation bound; opcheck on the three ops, torch.compile of a layer, and no layout copy for NDHWC input.
"""

from __future__ import annotations

import pytest
import torch

from involution import Involution3d
from involution.ops import involution3d, output_size, use_backend
from op_helpers import (
    NON_TORCH_CPU_BACKENDS,
    assert_matches_reference,
    assert_op_accumulates_in_float32,
    cpu_kernel_calls,
)
from reference import involution_nd_reference_and_grads

pytestmark = pytest.mark.skipif("cpu" not in NON_TORCH_CPU_BACKENDS, reason="the cpu backend does not build here")

# (C, G, size, kernel, stride, padding, dilation): C/G of 1, 3, 8 (one float32 vector), 9, 17, 37 and 64
GEOMETRIES = [
    (4, 4, (5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (6, 2, (6, 5, 9), (1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 2)),
    (16, 2, (7, 7, 6), (3, 2, 3), (2, 1, 3), (2, 0, 1), (2, 1, 1)),
    (18, 2, (4, 9, 8), (2, 3, 3), (1, 3, 2), (1, 2, 0), (3, 2, 1)),
    (17, 1, (5, 5, 5), (3, 1, 4), (2, 2, 2), (0, 0, 3), (1, 1, 1)),
    (74, 2, (3, 6, 6), (3, 3, 3), (1, 1, 1), (2, 1, 1), (2, 1, 2)),
    (64, 1, (3, 4, 5), (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)),
]
IDS = [f"c{g[0]}g{g[1]}k{''.join(map(str, g[3]))}s{''.join(map(str, g[4]))}" for g in GEOMETRIES]


def case_tensors(geometry, dtype: torch.dtype, layout: str, weight_layout: str, seed: int = 0):
    """input (N, C, D, H, W), weight (N, G, Kd, Kh, Kw, Do, Ho, Wo) and grad_output, float64 values rounded to
    ``dtype``, laid out as asked; and the geometry's (stride, padding, dilation)."""
    c, g, size, kernel, stride, padding, dilation = geometry
    out = tuple(output_size(*a) for a in zip(size, kernel, stride, padding, dilation))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, *size, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(2, g, *kernel, *out, generator=gen, dtype=torch.float64).to(dtype)
    gy = torch.randn(2, c, *out, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "ndhwc":
        x, gy = x.contiguous(memory_format=torch.channels_last_3d), gy.contiguous(memory_format=torch.channels_last_3d)
    if weight_layout == "generator":  # what Involution3d's channels_last_3d kernel generator hands the op
        w = w.flatten(1, 4).contiguous(memory_format=torch.channels_last_3d).unflatten(1, (g, *kernel))
    return x, w, gy, (stride, padding, dilation)


def op_results(x, w, gy, conv):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    with use_backend("cpu"):
        y = involution3d(x, w, *conv)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    return y, gx, gw


@pytest.mark.parametrize("weight_layout", ["contiguous", "generator"])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_native_kernels_match_the_reference(geometry, dtype, layout, weight_layout):
    x, w, gy, conv = case_tensors(geometry, dtype, layout, weight_layout)
    with cpu_kernel_calls() as calls:
        y, gx, gw = op_results(x, w, gy, conv)
    ref = involution_nd_reference_and_grads(x, w, gy, *conv)
    for name, got, expected in zip(("forward", "grad_input", "grad_weight"), (y, gx, gw), ref):
        assert got.dtype == dtype
        assert_matches_reference(got, expected, msg=f"{name} {layout} {weight_layout}")
    family = layout if x.shape[1] > 1 else "ncdhw"
    assert set(calls) == {(p, family) for p in ("forward3d", "backward_input3d", "backward_weight3d")}
    assert y.is_contiguous(memory_format=torch.channels_last_3d if layout == "ndhwc" else torch.contiguous_format)
    assert gw.stride() == w.stride()  # the weight's layout, generator view included


@pytest.mark.parametrize("weight_layout", ["contiguous", "generator"])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES[:6], ids=IDS[:6])
def test_native_low_precision_accumulates_in_float32(geometry, dtype, layout, weight_layout):
    """Each result within half an ulp (plus the float32 sum's bound) of the exact sum of the rounded inputs."""
    x, w, gy, conv = case_tensors(geometry, dtype, layout, weight_layout, seed=1)
    results = op_results(x, w, gy, conv)
    assert all(r.dtype == dtype for r in results)
    assert_op_accumulates_in_float32(results, x, w, gy, conv, msg=f"{dtype} {layout} {weight_layout}")


# Wider rows and taller slices than GEOMETRIES, for the NCDHW forward's blocking: rows of several register blocks
# with a remainder of more and of less than half a block, slices split into row blocks (several tasks per slice, and
# rows staged in several chunks), a width stride with dilation.
WIDE = [
    (8, 2, (3, 24, 40), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (32, 1, (3, 30, 70), (3, 3, 5), (1, 1, 2), (1, 1, 2), (1, 1, 1)),
    (12, 3, (4, 17, 45), (2, 5, 3), (2, 1, 1), (1, 2, 2), (1, 1, 2)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("input_layout", ["contiguous", "strided"])
@pytest.mark.parametrize("geometry", WIDE, ids=lambda g: "x".join(map(str, g[2])))
def test_ncdhw_forward_blocks(geometry, input_layout, dtype):
    """The NCDHW forward on rows of several blocks and slices of several tasks, on a contiguous input and on a
    strided one (every other column of a wider tensor), against the float64 reference (low precision: within the
    float32-accumulation bound)."""
    x, w, gy, conv = case_tensors(geometry, dtype, "ncdhw", "contiguous")
    if input_layout == "strided":
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert not x.is_contiguous()
    results = op_results(x, w, gy, conv)
    if dtype == torch.float64:
        ref = involution_nd_reference_and_grads(x, w, gy, *conv)
        for name, got, expected in zip(("forward", "grad_input", "grad_weight"), results, ref):
            assert_matches_reference(got, expected, msg=name)
    else:
        assert_op_accumulates_in_float32(results, x, w, gy, conv, msg=f"{dtype} {input_layout}")


@pytest.mark.parametrize("backend_name", ["cpu", "torch"])
@pytest.mark.parametrize("layout", ["ncdhw", "ndhwc"])
def test_opcheck(backend_name, layout):
    """Schema, fake tensors (strides included), autograd registration and AOT dispatch of the three 3-D ops, on the
    native kernels and on the depth-tap sums."""
    x, w, gy, conv = case_tensors(GEOMETRIES[1], torch.float64, layout, "generator")
    conv = [list(v) for v in conv]
    ops = torch.ops.involution
    with use_backend(backend_name):
        torch.library.opcheck(ops.involution3d.default, (x.requires_grad_(), w.requires_grad_(), *conv))
        torch.library.opcheck(ops.involution3d_backward_input.default, (gy, w.detach(), list(x.shape), *conv))
        torch.library.opcheck(ops.involution3d_backward_weight.default, (gy, x.detach(), w.detach(), *conv))


def test_depth_tap_sums_match_the_native_kernels():
    """The other backends' path (2-D taps) and the native kernels agree, gradients included."""
    x, w, gy, conv = case_tensors(GEOMETRIES[2], torch.float64, "ndhwc", "generator")
    native = op_results(x, w, gy, conv)
    x_, w_ = x.detach().requires_grad_(), w.detach().requires_grad_()
    with use_backend("torch"):
        y = involution3d(x_, w_, *conv)
        taps = (y, *torch.autograd.grad(y, (x_, w_), gy))
    for a, b in zip(native, taps):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert a.stride() == b.stride()


def test_compile_fullgraph_of_a_3d_layer():
    layer = Involution3d(16, kernel_size=3, stride=(1, 2, 2), groups=2).eval()
    x = torch.randn(2, 16, 4, 9, 9).contiguous(memory_format=torch.channels_last_3d)
    layer = layer.to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), use_backend("cpu"):
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(compiled, eager)


def test_ndhwc_input_is_not_copied():
    """Forward and both gradients on NDHWC features and a generator-view weight run the native kernels alone: no
    copy, contiguous or clone in the profile, the results in the input's and weight's layouts."""
    x, w, gy, conv = case_tensors(GEOMETRIES[0], torch.float32, "ndhwc", "generator")
    x, w = x.requires_grad_(), w.requires_grad_()
    with use_backend("cpu"), torch.profiler.profile() as prof:
        y = involution3d(x, w, *conv)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    names = {e.name for e in prof.events()}
    assert not names & {"aten::copy_", "aten::contiguous", "aten::clone", "aten::to", "aten::_to_copy"}, names
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and gx.stride() == x.stride()
    assert gw.stride() == w.stride()
