"""involution1d / involution3d against the unfold-free float64 reference, on every CPU backend.

Random configurations (sizes, groups, kernel, stride, padding, dilation per dimension, layouts): forward, both
gradients, gradcheck and gradgradcheck, torch.compile, torch.export at other sizes, and the argument errors.
"""

from __future__ import annotations

import random

import pytest
import torch

from involution.ops import involution1d, involution3d, output_size, use_backend
from op_helpers import CPU_BACKENDS, assert_matches_reference, assert_op_accumulates_in_float32
from reference import involution_nd_naive, involution_nd_reference

OPS = {1: involution1d, 3: involution3d}


def random_case(dims: int, seed: int, small: bool = False) -> dict:
    """A random geometry whose output is at least 1 in every dimension."""
    rng = random.Random(seed)
    while True:
        groups = rng.choice([1, 2, 3])
        case = {
            "n": rng.choice([1, 2, 3]),
            "c": groups * rng.choice([1, 2, 4]),
            "g": groups,
            "size": tuple(rng.randint(3, 6 if small else 9) for _ in range(dims)),
            "kernel": tuple(rng.choice([1, 2, 3] if small else [1, 3, 4, 5]) for _ in range(dims)),
            "stride": tuple(rng.choice([1, 2, 3]) for _ in range(dims)),
            "padding": tuple(rng.choice([0, 1, 2]) for _ in range(dims)),
            "dilation": tuple(rng.choice([1, 2]) for _ in range(dims)),
        }
        case["out"] = tuple(output_size(*a) for a in zip(case["size"], case["kernel"], case["stride"],
                                                          case["padding"], case["dilation"]))
        if min(case["out"]) >= 1:
            return case


def tensors(case: dict, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case["n"], case["c"], *case["size"], generator=gen, dtype=dtype)
    w = torch.randn(case["n"], case["g"], *case["kernel"], *case["out"], generator=gen, dtype=dtype)
    return x, w


def run(case: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return OPS[len(case["size"])](x, w, case["stride"], case["padding"], case["dilation"])


def reference(case: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return involution_nd_reference(x, w, case["stride"], case["padding"], case["dilation"])


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """NDHWC for 5-D, NLC (a transposed view) for 3-D inputs."""
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dims", [1, 3])
def test_forward_and_grads_match_the_reference(backend, dims, seed, layout):
    case = random_case(dims, seed)
    x, w = tensors(case, torch.float32, seed)
    if layout == "channels_last":
        x = channels_last(x)
    x.requires_grad_(True)
    w.requires_grad_(True)
    with use_backend(backend):
        out = run(case, x, w)
        grad_out = torch.randn_like(out)
        gx, gw = torch.autograd.grad(out, (x, w), grad_out)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    expect = reference(case, xr, wr)
    ex, ew = torch.autograd.grad(expect, (xr, wr), grad_out.double())
    msg = f"{case} {layout}"
    assert_matches_reference(out, expect, msg=msg)
    assert_matches_reference(gx, ex, msg=msg)
    assert_matches_reference(gw, ew, msg=msg)
    if dims == 3 and layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last_3d)  # the layout goes through


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_reference_is_the_defining_formula(dims):
    """The oracle every backend is held to, checked once against the formula written out term by term."""
    for seed in range(3):
        case = random_case(dims, 200 + seed, small=True)
        x, w = tensors(case, torch.float64, seed)
        geometry = (case["stride"], case["padding"], case["dilation"])
        torch.testing.assert_close(involution_nd_reference(x, w, *geometry), involution_nd_naive(x, w, *geometry),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 3])
def test_float64_is_exact(dims):
    for seed in range(4):
        case = random_case(dims, 100 + seed)
        x, w = tensors(case, torch.float64, seed)
        assert_matches_reference(run(case, x, w), reference(case, x, w))


@pytest.mark.parametrize("dims", [1, 3])
def test_gradcheck_and_gradgradcheck(backend, dims):
    case = random_case(dims, 7, small=True)
    x, w = (t.requires_grad_(True) for t in tensors(case, torch.float64))
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: run(case, a, b), (x, w))
        assert torch.autograd.gradgradcheck(lambda a, b: run(case, a, b), (x, w))


# Long sums, where a sum done in bfloat16/float16 anywhere (inside a kernel, or across the 3-D op's depth taps)
# breaks the float32-accumulation bound though not a tolerance scaled by max|ref|: forward and grad_input add
# prod(kernel) products per element (45 in 3-D, over 5 depth taps; 9 in 1-D), grad_weight C/G = 32.
LONG_SUMS = {
    1: {"n": 2, "c": 64, "g": 2, "size": (19,), "kernel": (9,), "stride": (1,), "padding": (4,), "dilation": (1,),
        "out": (19,)},
    3: {"n": 2, "c": 64, "g": 2, "size": (6, 5, 4), "kernel": (5, 3, 3), "stride": (1, 1, 1),
        "padding": (2, 1, 1), "dilation": (1, 1, 1), "out": (6, 5, 4)},
}


def low_precision_results(case: dict, dtype: torch.dtype, layout: str, autocast: bool = False):
    """The op's (output, grad_input, grad_weight) on ``dtype``-rounded tensors, and those tensors."""
    x, w = tensors(case, torch.float64, seed=5)
    x, w = x.to(dtype), w.to(dtype)
    grad_out = torch.randn(case["n"], case["c"], *case["out"], generator=torch.Generator().manual_seed(6),
                           dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    given = (x.float(), w.float()) if autocast else (x, w)  # autocast rounds them to ``dtype`` itself
    given = tuple(t.detach().requires_grad_() for t in given)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = run(case, *given)
    gx, gw = torch.autograd.grad(out, given, grad_out)
    assert out.dtype == dtype
    # under autocast the gradients come back in float32, holding ``dtype`` values: the cast is exact
    return (out, gx.to(dtype), gw.to(dtype)), (x, w, grad_out)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dims", [1, 3])
def test_low_precision_accumulates_in_float32(backend, dims, dtype, layout):
    """Output and both gradients within half an ulp (plus the float32 sum's error bound) of the exact sum of the
    rounded inputs: every one of the prod(kernel) taps summed in float32 and rounded once."""
    case = LONG_SUMS[dims]
    with use_backend(backend):
        results, inputs = low_precision_results(case, dtype, layout)
    geometry = (case["stride"], case["padding"], case["dilation"])
    assert_op_accumulates_in_float32(results, *inputs, geometry, msg=f"{backend} {dims}-D {dtype} {layout}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("dims", [1, 3])
def test_autocast_accumulates_in_float32(dims, dtype):
    """float32 tensors under autocast: rounded to the autocast dtype once, then summed as above."""
    case = LONG_SUMS[dims]
    results, inputs = low_precision_results(case, dtype, "contiguous", autocast=True)
    geometry = (case["stride"], case["padding"], case["dilation"])
    assert_op_accumulates_in_float32(results, *inputs, geometry, msg=f"autocast {dims}-D {dtype}")


@pytest.mark.parametrize("dims", [1, 3])
def test_low_precision_random_geometries(backend, dims):
    """Strides, paddings, dilations and groups of every kind in bfloat16, against the same bound."""
    for seed in range(3):
        case = random_case(dims, 40 + seed)
        with use_backend(backend):
            results, inputs = low_precision_results(case, torch.bfloat16, "channels_last" if seed % 2 else "contiguous")
        geometry = (case["stride"], case["padding"], case["dilation"])
        assert_op_accumulates_in_float32(results, *inputs, geometry, msg=f"{backend} {case}")


@pytest.mark.parametrize("dims", [1, 3])
def test_compile_matches_eager(dims):
    case = random_case(dims, 11, small=True)
    x, w = tensors(case, torch.float32)
    compiled = torch.compile(lambda a, b: run(case, a, b), fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x, w), run(case, x, w))


class _Op(torch.nn.Module):
    def __init__(self, case: dict) -> None:
        super().__init__()
        self.case = case

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return run(self.case, x, w)


@pytest.mark.parametrize("dims", [1, 3])
def test_export_with_dynamic_sizes_matches_eager_at_other_sizes(dims):
    case = {"n": 2, "c": 4, "g": 2, "size": (9,) * dims, "kernel": (3,) * dims, "stride": (1,) * dims,
            "padding": (1,) * dims, "dilation": (1,) * dims, "out": (9,) * dims}
    auto = torch.export.Dim.AUTO
    x_dyn = {0: auto, **{2 + i: auto for i in range(dims)}}
    w_dyn = {0: auto, **{2 + dims + i: auto for i in range(dims)}}
    program = torch.export.export(_Op(case), tensors(case, torch.float32), dynamic_shapes=(x_dyn, w_dyn))
    other = dict(case, n=3, size=(7,) * dims, out=(7,) * dims)
    x, w = tensors(other, torch.float32, seed=1)
    torch.testing.assert_close(program.module()(x, w), run(other, x, w))


@pytest.mark.parametrize("dims", [1, 3])
def test_translation_equivariance_along_each_axis(dims):
    """Shifting the input and its kernels by t along one axis shifts the output by t (away from the borders)."""
    case = {"n": 1, "c": 4, "g": 2, "size": (12,) * dims, "kernel": (3,) * dims, "stride": (1,) * dims,
            "padding": (1,) * dims, "dilation": (1,) * dims, "out": (12,) * dims}
    x, w = tensors(case, torch.float64)
    out = run(case, x, w)
    for axis in range(dims):
        shifted = run(case, x.roll(2, 2 + axis), w.roll(2, 2 + dims + axis))
        inner = [slice(None), slice(None)] + [slice(3, -3)] * dims  # away from the zero padding and the wrap
        torch.testing.assert_close(shifted[tuple(inner)], out.roll(2, 2 + axis)[tuple(inner)])


@pytest.mark.parametrize(
    "dims, x_shape, w_shape, kwargs, error, match",
    [
        (1, (2, 4, 9), (2, 2, 3, 9, 1), {"padding": 1}, ValueError, r"weight must be 4-D \(N, G, K, Lo\)"),
        (1, (2, 4, 9, 1), (2, 2, 3, 9), {"padding": 1}, ValueError, r"input must be 3-D \(N, C, L\)"),
        (3, (2, 4, 5, 5, 5), (3, 2, 3, 3, 3, 5, 5, 5), {"padding": 1}, ValueError, "batch size 3 does not match"),
        (3, (2, 5, 5, 5, 5), (2, 2, 3, 3, 3, 5, 5, 5), {"padding": 1}, ValueError, "divisible by the weight's group"),
        (3, (2, 4, 5, 5, 5), (2, 2, 3, 3, 3, 5, 5, 4), {"padding": 1}, ValueError, r"spatial size \(5, 5, 4\)"),
        (3, (1, 4, 2, 5, 5), (1, 2, 5, 3, 3, 1, 5, 5), {"padding": (0, 1, 1)}, ValueError, "too small"),
        (3, (1, 4, 5, 5, 5), (1, 2, 3, 3, 3, 5, 5, 5), {"padding": (1, 1)}, TypeError, "padding must be an int or 3"),
        (1, (1, 4, 5), (1, 2, 3, 3), {"stride": 0}, ValueError, "stride must be >= 1"),
    ],
)
def test_bad_arguments_raise_naming_the_problem(dims, x_shape, w_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        OPS[dims](torch.randn(x_shape), torch.randn(w_shape), **kwargs)


def test_dtype_and_device_mismatches_raise():
    x, w = torch.randn(1, 4, 5, 5, 5), torch.randn(1, 2, 3, 3, 3, 5, 5, 5)
    with pytest.raises(TypeError, match="same dtype"):
        involution3d(x, w.double(), padding=1)
    with pytest.raises(TypeError, match="floating-point"):
        involution1d(torch.ones(1, 4, 5, dtype=torch.int64), torch.ones(1, 2, 3, 5), padding=1)
    with pytest.raises(ValueError, match="same device"):
        involution3d(x, w.to("meta"), padding=1)


def test_every_cpu_backend_is_under_test():
    assert "torch" in CPU_BACKENDS


@pytest.mark.parametrize("dims", [1])
def test_opcheck_on_the_calls_the_nd_ops_make(dims, monkeypatch):
    """The 1-D op is a composition over ``involution::involution2d``; opcheck that op (schema, fake tensors,
    autograd registration, AOT dispatch) on exactly the strided views it hands it. (The 3-D op is its own:
    tests/ops/test_involution3d_op.py.)"""
    import involution.ops.involution_nd as nd

    calls = []
    real = nd.involution2d_op

    def recording(*args):
        calls.append(tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args))
        return real(*args)

    monkeypatch.setattr(nd, "involution2d_op", recording)
    case = random_case(dims, 21, small=True)
    x, w = tensors(case, torch.float64)
    run(case, channels_last(x) if dims == 3 else x.transpose(1, 2).contiguous().transpose(1, 2), w)
    assert calls
    for args in calls:
        torch.library.opcheck(torch.ops.involution.involution2d.default, args)
