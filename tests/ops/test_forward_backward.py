"""Forward, grad_input and grad_weight of every CPU backend against the float64 unfold reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import involution
from involution.ops import output_size, use_backend
from op_helpers import (
    CPU_BACKENDS,
    NON_TORCH_CPU_BACKENDS,
    assert_matches_reference,
    assert_op_accumulates_in_float32,
    is_channels_last,
    make_case,
)
from reference import involution2d_naive, involution2d_reference, reference_grads

MAX_HW = 14


# ------------------------------------------------------------------------------------------- the oracle itself
def test_reference_matches_the_defining_formula() -> None:
    g = torch.Generator().manual_seed(1)
    for args in [
        dict(n=2, c=4, g=2, kernel=(3, 2), hw=(5, 6), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        dict(n=1, c=2, g=1, kernel=(1, 3), hw=(3, 5), stride=(1, 3), padding=(0, 1), dilation=(2, 1)),
    ]:
        x, w = make_case(**args, dtype=torch.float64, generator=g)
        geo = (args["stride"], args["padding"], args["dilation"])
        expected = involution2d_naive(x, w, *geo)
        torch.testing.assert_close(involution2d_reference(x, w, *geo), expected, rtol=1e-12, atol=1e-12)
        # and the op itself, as a sanity check independent of the unfold formulation
        torch.testing.assert_close(involution.involution2d(x, w, *geo), expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ randomised configs
@st.composite
def geometries(draw):
    """A random valid geometry (non-empty output), with layouts for the input and the weight."""
    n = draw(st.integers(1, 3))
    g = draw(st.integers(1, 3))
    # C/G: small, exactly a vector width, and around it (tails of 8- and 16-wide vectors)
    cg = draw(st.one_of(st.sampled_from([1, 7, 8, 9, 15, 16, 17, 20]), st.integers(1, 20)))
    kernel = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 4)), draw(st.integers(0, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    hw = []
    for k, p, d in zip(kernel, padding, dilation):
        low = max(1, d * (k - 1) + 1 - 2 * p)  # smallest size with a non-empty output
        assume(low <= MAX_HW)
        hw.append(draw(st.integers(low, MAX_HW)))
    for a in range(2):
        assert output_size(hw[a], kernel[a], stride[a], padding[a], dilation[a]) >= 1
    layout = draw(st.sampled_from(INPUT_LAYOUTS)), draw(st.sampled_from(WEIGHT_LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        n=n, c=g * cg, g=g, kernel=kernel, hw=tuple(hw), stride=stride, padding=padding, dilation=dilation
    ), layout, seed


INPUT_LAYOUTS = ["contiguous", "channels_last", "strided"]
WEIGHT_LAYOUTS = ["contiguous", "generator", "sliced", "permuted"]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a view with steps in H and W of a larger tensor
        big = torch.zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 3 * x.shape[3], dtype=x.dtype)
        big[:, :, ::2, ::3] = x
        return big[:, :, ::2, ::3].detach()
    return x


def _weight_layout(w: torch.Tensor, layout: str) -> torch.Tensor:
    """``w`` (values unchanged) as a differentiable tensor with the given strides."""
    if layout == "generator":  # a channels_last (N, G*Kh*Kw, Ho, Wo) generator output viewed as 6-D
        g, kh, kw = w.shape[1:4]
        leaf = w.flatten(1, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
        return leaf.unflatten(1, (g, kh, kw))
    if layout == "sliced":  # not dense: every other column of a wider tensor
        big = torch.zeros(*w.shape[:-1], 2 * w.shape[-1], dtype=w.dtype)
        big[..., ::2] = w
        return big.requires_grad_()[..., ::2]
    if layout == "permuted":  # dense, stored as (N, Ho, Wo, G, Kh, Kw)
        return w.permute(0, 4, 5, 1, 2, 3).contiguous().requires_grad_().permute(0, 3, 4, 5, 1, 2)
    return w.clone().requires_grad_()


def _run_op(backend: str, case: dict, layout: str | tuple[str, str], seed: int, dtype: torch.dtype):
    """Forward and both gradients of one random case through ``backend``, with the layouts' own checks: returns
    the contiguous inputs (input, weight, grad_output), the geometry and (output, grad_input, grad_weight)."""
    gen = torch.Generator().manual_seed(seed)
    x0, w0 = make_case(**case, dtype=dtype, generator=gen)
    geo = (case["stride"], case["padding"], case["dilation"])
    input_layout, weight_layout = (layout, "contiguous") if isinstance(layout, str) else layout
    x = _layout(x0, input_layout).requires_grad_()
    w = _weight_layout(w0, weight_layout)
    assert torch.equal(w, w0)
    with use_backend(backend):
        out = involution.involution2d(x, w, *geo)
        gy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
        gx, gw = torch.autograd.grad(out, (x, w), gy)

    assert out.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    assert gx.shape == x.shape and gw.shape == w.shape
    # the output is laid out like the input: NHWC stays NHWC, anything else is NCHW
    if is_channels_last(x):
        assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
    else:
        assert out.is_contiguous(), out.stride()
    return (x0, w0, gy), geo, (out, gx, gw)


def _check_against_reference(
    backend: str, case: dict, layout: str | tuple[str, str], seed: int, dtype: torch.dtype
) -> None:
    (x0, w0, gy), geo, (out, gx, gw) = _run_op(backend, case, layout, seed, dtype)
    expected = involution2d_reference(x0, w0, *geo)
    ref_gx, ref_gw = reference_grads(x0, w0, gy, *geo)
    info = f"backend={backend} case={case} layout={layout} dtype={dtype}"
    assert_matches_reference(out, expected, msg=f"forward {info}")
    assert_matches_reference(gx, ref_gx, msg=f"grad_input {info}")
    assert_matches_reference(gw, ref_gw, msg=f"grad_weight {info}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@settings(deadline=None, max_examples=25)
@given(config=geometries())
def test_forward_and_grads_match_reference(backend: str, dtype: torch.dtype, config) -> None:
    case, layout, seed = config
    _check_against_reference(backend, case, layout, seed, dtype)


# Fixed corner cases, so they are always exercised whatever hypothesis draws.
FIXED_CASES = [
    dict(n=1, c=1, g=1, kernel=(1, 1), hw=(1, 1)),
    dict(n=2, c=32, g=2, kernel=(7, 7), hw=(14, 14), padding=(3, 3)),  # C/G = 16, the paper's default
    dict(n=1, c=34, g=2, kernel=(3, 3), hw=(9, 9), padding=(1, 1)),  # C/G = 17: a vector plus a tail of one
    dict(n=3, c=45, g=3, kernel=(5, 3), hw=(11, 6), stride=(2, 3), padding=(2, 0), dilation=(1, 2)),
    dict(n=2, c=6, g=3, kernel=(7, 1), hw=(3, 4), stride=(3, 1), padding=(4, 0), dilation=(1, 3)),  # mostly padding
    dict(n=1, c=40, g=1, kernel=(3, 3), hw=(4, 13), stride=(1, 2), padding=(4, 4), dilation=(3, 3)),  # C/G = 40
    dict(n=2, c=8, g=1, kernel=(2, 4), hw=(1, 14), padding=(1, 2)),  # even kernel, single-row input
    # C/G = 16 and 32 (whole vectors, two groups at once in the CPU kernel) with odd and even interior widths
    dict(n=2, c=64, g=4, kernel=(3, 5), hw=(6, 19), padding=(1, 2)),
    dict(n=1, c=64, g=2, kernel=(3, 3), hw=(5, 14), padding=(1, 1)),
]


@pytest.mark.parametrize(
    "layout",
    [
        ("contiguous", "contiguous"),
        ("channels_last", "generator"),
        ("strided", "sliced"),
        ("channels_last", "permuted"),
        ("contiguous", "generator"),
    ],
    ids="-".join,
)
@pytest.mark.parametrize("case", FIXED_CASES, ids=lambda c: f"C{c['c']}G{c['g']}K{c['kernel']}HW{c['hw']}")
def test_fixed_cases_match_reference(backend: str, case: dict, layout: str) -> None:
    case = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), **case}
    _check_against_reference(backend, case, layout, seed=123, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- layouts and strides
def _grads_vs_reference(backend, x, w, leaves, geo, gy=None):
    with use_backend(backend):
        out = involution.involution2d(x, w, *geo)
        if gy is None:
            gy = torch.randn_like(out, memory_format=torch.contiguous_format)
        grads = torch.autograd.grad(out, leaves, gy)
    expected = involution2d_reference(x.detach(), w.detach(), *geo)
    ref_gx, ref_gw = reference_grads(x, w, gy, *geo)
    return out, grads, expected, ref_gx, ref_gw


def test_channels_last_input_gives_channels_last_output(backend: str) -> None:
    torch.manual_seed(0)
    x0, w = make_case(2, 12, 3, (3, 3), (8, 7), stride=(2, 1), padding=(1, 1))
    x = x0.contiguous(memory_format=torch.channels_last).requires_grad_()
    w.requires_grad_()
    geo = ((2, 1), (1, 1), (1, 1))
    out, (gx, gw), expected, ref_gx, ref_gw = _grads_vs_reference(backend, x, w, (x, w), geo)
    assert is_channels_last(out), out.stride()
    assert_matches_reference(out, expected)
    assert_matches_reference(gx, ref_gx)
    assert_matches_reference(gw, ref_gw)
    # and the NCHW input gives the same numbers in NCHW
    with use_backend(backend):
        out_nchw = involution.involution2d(x0, w.detach(), *geo)
    assert out_nchw.is_contiguous()
    torch.testing.assert_close(out_nchw, out.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda big: big[:, ::2], id="channel-step"),
        pytest.param(lambda big: big[:, :, 1::2, ::3], id="spatial-step"),
        pytest.param(lambda big: big.contiguous(memory_format=torch.channels_last)[:, 1::2, :, 1:], id="nhwc-slice"),
        pytest.param(lambda big: big.transpose(2, 3), id="transposed"),
    ],
)
def test_non_contiguous_input(backend: str, make_view) -> None:
    torch.manual_seed(1)
    big = torch.randn(2, 16, 15, 15)
    x = make_view(big)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    x = x.detach().requires_grad_()  # a leaf that keeps the non-contiguous strides
    n, c, h, wd = x.shape
    geo = ((1, 2), (2, 1), (1, 1))
    ho, wo = output_size(h, 3, 1, 2, 1), output_size(wd, 5, 2, 1, 1)
    w = torch.randn(n, 2, 3, 5, ho, wo, requires_grad=True)
    out, (gx, gw), expected, ref_gx, ref_gw = _grads_vs_reference(backend, x, w, (x, w), geo)
    assert out.is_contiguous()
    assert_matches_reference(out, expected)
    assert_matches_reference(gx, ref_gx)
    assert_matches_reference(gw, ref_gw)


@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last"])
def test_strided_weight_from_channels_last_generator(backend: str, input_layout: str) -> None:
    """A (N, G*Kh*Kw, Ho, Wo) channels_last tensor viewed as 6-D is read in place, and its grad keeps its strides."""
    torch.manual_seed(2)
    n, c, g, kh, kw, h, wd = 2, 24, 3, 3, 5, 9, 10
    geo = ((2, 2), (1, 2), (1, 1))
    ho, wo = output_size(h, kh, 2, 1, 1), output_size(wd, kw, 2, 2, 1)
    w4 = torch.randn(n, g * kh * kw, ho, wo).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = w4.unflatten(1, (g, kh, kw))
    assert not w.is_contiguous()
    x = torch.randn(n, c, h, wd)
    if input_layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, (gx, gw4), expected, ref_gx, ref_gw = _grads_vs_reference(backend, x, w, (x, w4), geo)
    assert_matches_reference(out, expected)
    assert_matches_reference(gx, ref_gx)
    assert_matches_reference(gw4, ref_gw.flatten(1, 3))

    # the weight-gradient op allocates its result with the weight's (dense) strides
    with use_backend(backend):
        gy = torch.randn_like(out)
        gw_op = torch.ops.involution.involution2d_backward_weight(gy, x.detach(), w.detach(), *geo)
    assert gw_op.stride() == w.stride()
    assert_matches_reference(gw_op, reference_grads(x, w, gy, *geo)[1])


def test_expanded_weight_and_grad_output(backend: str) -> None:
    """Zero strides: one kernel shared by the batch, and the expanded grad_output that ``out.sum()`` sends back."""
    torch.manual_seed(3)
    x = torch.randn(3, 10, 6, 7, requires_grad=True)
    w1 = torch.randn(1, 2, 3, 3, 6, 7, requires_grad=True)
    w = w1.expand(3, -1, -1, -1, -1, -1)
    geo = (1, 1, 1)
    with use_backend(backend):
        out = involution.involution2d(x, w, *geo)
        out.sum().backward()
    expected = involution2d_reference(x.detach(), w.detach(), *geo)
    ref_gx, ref_gw = reference_grads(x, w, torch.ones(expected.shape, dtype=torch.float64), *geo)
    assert_matches_reference(out, expected)
    assert_matches_reference(x.grad, ref_gx)
    assert_matches_reference(w1.grad, ref_gw.sum(0, keepdim=True))


def test_integer_and_pair_arguments_are_equivalent(backend: str) -> None:
    torch.manual_seed(4)
    x, w = make_case(1, 4, 2, (3, 3), (8, 8), stride=(2, 2), padding=(1, 1), dilation=(2, 2))
    with use_backend(backend):
        a = involution.involution2d(x, w, 2, 1, 2)
        b = involution.involution2d(x, w, (2, 2), [1, 1], (2, 2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ low precision
LOW_PRECISION_CASES = [
    dict(n=2, c=32, g=2, kernel=(7, 7), hw=(12, 12), padding=(3, 3)),
    dict(n=1, c=17, g=1, kernel=(3, 5), hw=(9, 10), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(n=2, c=12, g=3, kernel=(3, 3), hw=(7, 8), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
]


@pytest.mark.parametrize(
    "layout", [("contiguous", "contiguous"), ("channels_last", "generator"), ("strided", "permuted")], ids="-".join
)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda c: f"C{c['c']}K{c['kernel']}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_matches_reference(backend: str, dtype: torch.dtype, case: dict, layout: tuple)  -> None:
    """Compared to the float64 reference of the already-rounded inputs, so only the op's own error counts."""
    case = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), **case}
    _check_against_reference(backend, case, layout, seed=7, dtype=dtype)


# Long sums, where a kernel that accumulated in bfloat16/float16 would break the bound below (its error grows with
# the number of additions) though not the max|ref|-scaled tolerance above: K=7 makes forward and grad_input add
# 49 products per element, C/G = 64 makes grad_weight add 64.
LONG_SUMS = dict(n=1, c=128, g=2, kernel=(7, 7), hw=(10, 10), stride=(1, 1), padding=(3, 3), dilation=(1, 1))


@pytest.mark.parametrize("layout", [("contiguous", "contiguous"), ("channels_last", "generator")], ids="-".join)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_accumulates_in_float32(backend: str, dtype: torch.dtype, layout: tuple) -> None:
    """Every element within half an ulp of its own value (plus the float32 sum's error bound) of the exact sum of
    the already-rounded inputs: what a float32 sum rounded once can give, and no more."""
    inputs, geo, results = _run_op(backend, LONG_SUMS, layout, seed=11, dtype=dtype)
    assert_op_accumulates_in_float32(results, *inputs, geo, msg=f"backend={backend} dtype={dtype} layout={layout}")


# -------------------------------------------------------------------------------------------- gradcheck
GRADCHECK_CASES = [
    dict(n=2, c=4, g=2, kernel=(3, 2), hw=(5, 4), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    dict(n=1, c=3, g=1, kernel=(1, 3), hw=(4, 3), stride=(1, 1), padding=(0, 2), dilation=(1, 1)),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=["strided-dilated", "pad-wide"])
def test_gradcheck_and_gradgradcheck(backend: str, case: dict) -> None:
    gen = torch.Generator().manual_seed(5)
    x, w = make_case(**case, dtype=torch.float64, generator=gen)
    x.requires_grad_()
    w.requires_grad_()
    geo = (case["stride"], case["padding"], case["dilation"])

    def fn(x, w):
        return involution.involution2d(x, w, *geo)

    with use_backend(backend):
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))


def test_gradcheck_channels_last(backend: str) -> None:
    gen = torch.Generator().manual_seed(6)
    x, w = make_case(1, 4, 2, (3, 3), (3, 4), padding=(1, 1), dtype=torch.float64, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w.requires_grad_()
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda x, w: involution.involution2d(x, w, 1, 1), (x, w))
        assert torch.autograd.gradgradcheck(lambda x, w: involution.involution2d(x, w, 1, 1), (x, w))


# ------------------------------------------------------------------------------------ backends agree
AGREE_CASES = [
    dict(n=2, c=64, g=4, kernel=(7, 7), hw=(14, 14), padding=(3, 3)),
    dict(n=3, c=20, g=2, kernel=(3, 5), hw=(13, 11), stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", AGREE_CASES, ids=["K7", "strided"])
@pytest.mark.parametrize("other", NON_TORCH_CPU_BACKENDS)
def test_backends_agree_with_torch_backend(other: str, case: dict, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(8)
    case = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), **case}
    x, w = make_case(**case, dtype=dtype, generator=gen)
    geo = (case["stride"], case["padding"], case["dilation"])
    results = {}
    for name in ("torch", other):
        xx = x.clone().requires_grad_()
        ww = w.clone().requires_grad_()
        with use_backend(name):
            out = involution.involution2d(xx, ww, *geo)
            gy = torch.ones_like(out) * 0.5 + torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
            gx, gw = torch.autograd.grad(out, (xx, ww), gy)
        results[name] = (out, gx, gw)
    # both accumulate in at least float32, so in bf16 they differ by at most one rounding of the result
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3}[dtype]
    for a, b, what in zip(results["torch"], results[other], ("output", "grad_input", "grad_weight")):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(
            b.double(), a.double(), rtol=tol, atol=tol, msg=lambda m: f"{other} vs torch, {what}: {m}"
        )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_torch_backend_in_cache_sized_batch_chunks(monkeypatch, layout: str) -> None:
    """The torch backend runs the taps over a few images at a time; chunks of 1 and 2 of 5 images agree with the
    reference in both layouts."""
    from involution.ops.backends import torch_impl

    case = {"n": 5, "c": 8, "g": 2, "kernel": (3, 3), "hw": (9, 7), "stride": (2, 1), "padding": (1, 1),
            "dilation": (1, 1)}
    for chunk_images in (1, 2):
        per_image = 8 * 5 * 7 * 4  # the output's C * Ho * Wo float32s
        monkeypatch.setattr(torch_impl, "_CHUNK_BYTES", chunk_images * per_image)
        assert len(torch_impl._cache_sized_chunks(torch.empty(5, 8, 5, 7))) == -(-5 // chunk_images)
        _check_against_reference("torch", case, layout, seed=chunk_images, dtype=torch.float64)
