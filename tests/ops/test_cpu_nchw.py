"""The compiled backend's two kernel families: NCHW kernels for NCHW (and other non-channels_last) feature maps,
NHWC kernels for channels_last ones (issue 17). Each case checks the family that ran (``cpu_kernel_calls``) and the
forward, grad_input and grad_weight against the float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch

import involution
from involution.ops import output_size, use_backend
from op_helpers import CPU_BACKENDS, assert_matches_reference, cpu_kernel_calls, is_channels_last, make_case
from reference import involution2d_reference, reference_grads

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the compiled cpu backend is not available here")

PASSES = ("forward", "backward_input", "backward_weight")


def _ran(calls: dict, family: str) -> set[str]:
    """The passes whose ``family`` kernels ran, as ``calls`` (a :func:`cpu_kernel_calls` counter) counted them."""
    return {p for p in PASSES if calls.get((p, family), 0) > 0}


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def _generator_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(leaf, 6-D view): a channels_last (N, G*Kh*Kw, Ho, Wo) tensor viewed as (N, G, Kh, Kw, Ho, Wo), whose taps are
    pixel-major, as a channels_last kernel generator produces them."""
    g, kh, kw = w.shape[1:4]
    leaf = w.detach().flatten(1, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    return leaf, leaf.unflatten(1, (g, kh, kw))


def _check(case: dict, dtype: torch.dtype, input_layout: str, weight_layout: str, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x0, w0 = make_case(**case, dtype=dtype, generator=gen)
    geo = (case["stride"], case["padding"], case["dilation"])
    x = (x0.contiguous(memory_format=torch.channels_last) if input_layout == "nhwc" else x0.clone()).requires_grad_()
    w = _generator_weight(w0)[1] if weight_layout == "pixel_major" else w0.clone().requires_grad_()
    with use_backend("cpu"), cpu_kernel_calls() as calls:
        out = involution.involution2d(x, w, *geo)
        gy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
        # laid out like the output, as autograd's own gradients are (grad_input takes grad_output's layout)
        gx, gw = torch.autograd.grad(out, (x, w), gy.contiguous(memory_format=_format(out)))
    family, other = ("nhwc", "nchw") if input_layout == "nhwc" else ("nchw", "nhwc")
    if x.shape[1] > 1 or input_layout == "nchw":  # (a one-channel "channels_last" tensor is also NCHW)
        assert _ran(calls, family) == set(PASSES), (family, calls)
        assert _ran(calls, other) == set(), (other, calls)
    assert is_channels_last(out) == is_channels_last(x) and is_channels_last(gx) == is_channels_last(x)
    assert gw.stride() == w.stride()

    info = f"case={case} dtype={dtype} input={input_layout} weight={weight_layout}"
    assert_matches_reference(out, involution2d_reference(x0, w0, *geo), msg=f"forward {info}")
    ref_gx, ref_gw = reference_grads(x0, w0, gy, *geo)
    assert_matches_reference(gx, ref_gx, msg=f"grad_input {info}")
    assert_matches_reference(gw, ref_gw, msg=f"grad_weight {info}")


def _geometries() -> list[dict]:
    """Every kernel size 1, 3, 5, 7 x stride 1, 2, 3 x dilation 1, 2, on non-square inputs whose output widths are
    not multiples of the 8- or 16-wide blocks, with C/G = 1 (G = C), 4, 5, 6 (G = 1) and 17 and N = 1 or 2."""
    channels = [(6, 1), (10, 2), (7, 7), (12, 3), (34, 2)]  # (C, G)
    sizes = [(9, 21), (13, 37), (20, 11), (17, 50), (6, 29)]
    cases = []
    for idx, (k, s, d) in enumerate(itertools.product((1, 3, 5, 7), (1, 2, 3), (1, 2))):
        c, g = channels[idx % len(channels)]
        h, w = sizes[idx % len(sizes)]
        kernel = (k, max(1, k - 2 * (idx % 2)))  # every other case with a narrower kernel
        padding = (d * (kernel[0] // 2), (idx % 3) + d * (kernel[1] // 2) // 2)
        stride = (s, 1 + (s + idx) % 3)
        dilation = (d, 1 + (d + idx) % 2)
        for a, size in enumerate((h, w)):
            assert output_size(size, kernel[a], stride[a], padding[a], dilation[a]) >= 1
        cases.append(dict(n=1 + idx % 2, c=c, g=g, kernel=kernel, hw=(h, w), stride=stride, padding=padding,
                          dilation=dilation))
    return cases


GEOMETRIES = _geometries()


def _case_id(c: dict) -> str:
    pairs = "".join(f"{k[0]}{c[k][0]}{c[k][1]}" for k in ("stride", "padding", "dilation"))
    return f"N{c['n']}C{c['c']}G{c['g']}K{c['kernel'][0]}x{c['kernel'][1]}HW{c['hw'][0]}x{c['hw'][1]}{pairs}"


@pytest.mark.parametrize("input_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", GEOMETRIES, ids=_case_id)
def test_both_families_match_reference(case: dict, input_layout: str) -> None:
    _check(case, torch.float32, input_layout, "contiguous")


@pytest.mark.parametrize("case", GEOMETRIES[::3], ids=_case_id)
def test_nchw_float64(case: dict) -> None:
    _check(case, torch.float64, "nchw", "contiguous", seed=1)


MIXED = [
    dict(n=2, c=32, g=2, kernel=(7, 7), hw=(14, 19), stride=(1, 1), padding=(3, 3), dilation=(1, 1)),
    dict(n=1, c=15, g=3, kernel=(3, 5), hw=(11, 23), stride=(2, 3), padding=(1, 2), dilation=(2, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    ("input_layout", "weight_layout"), [("nchw", "pixel_major"), ("nhwc", "contiguous")], ids="-".join
)
@pytest.mark.parametrize("case", MIXED, ids=["K7", "strided"])
def test_mixed_layouts(case: dict, input_layout: str, weight_layout: str, dtype: torch.dtype) -> None:
    """A weight in the other family's layout is converted for the kernel; its gradient keeps the weight's strides."""
    _check(case, dtype, input_layout, weight_layout, seed=2)


def test_paper_shape_both_families_agree() -> None:
    """C/G = 16, K = 7 on a 56-wide map (blocks of 16 and a tail of 8): the two families give the same numbers."""
    gen = torch.Generator().manual_seed(3)
    x, w = make_case(2, 32, 2, (7, 7), (10, 56), padding=(3, 3), generator=gen)
    gy = torch.randn(2, 32, 10, 56, generator=gen)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xx = x.contiguous(memory_format=fmt).requires_grad_()
        ww = w.clone().requires_grad_()
        with use_backend("cpu"):
            out = involution.involution2d(xx, ww, 1, 3, 1)
            results.append((out, *torch.autograd.grad(out, (xx, ww), gy.contiguous(memory_format=fmt))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_direct_ops_follow_the_feature_layout() -> None:
    """The gradient ops called alone: grad_input is laid out like grad_output and computed by that family."""
    gen = torch.Generator().manual_seed(4)
    x, w = make_case(1, 8, 2, (3, 3), (7, 13), stride=(1, 2), padding=(1, 1), generator=gen)
    geo = ((1, 2), (1, 1), (1, 1))
    gy = torch.randn(1, 8, 7, 7, generator=gen)
    ref_gx, ref_gw = reference_grads(x, w, gy, *geo)
    for fmt, family in ((torch.contiguous_format, "nchw"), (torch.channels_last, "nhwc")):
        with use_backend("cpu"), cpu_kernel_calls() as calls:
            gx = torch.ops.involution.involution2d_backward_input(gy.contiguous(memory_format=fmt), w, x.shape, *geo)
            gw = torch.ops.involution.involution2d_backward_weight(gy, x.contiguous(memory_format=fmt), w, *geo)
        assert _ran(calls, family) == {"backward_input", "backward_weight"}
        assert is_channels_last(gx) == (fmt == torch.channels_last)
        assert_matches_reference(gx, ref_gx)
        assert_matches_reference(gw, ref_gw)


def test_low_precision_runs_the_nchw_kernels_in_float32() -> None:
    gen = torch.Generator().manual_seed(5)
    x, w = make_case(1, 12, 3, (5, 5), (9, 18), padding=(2, 2), dtype=torch.bfloat16, generator=gen)
    with use_backend("cpu"), cpu_kernel_calls() as calls:
        out = involution.involution2d(x, w, 1, 2, 1)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    assert _ran(calls, "nchw") == {"forward"}
    assert_matches_reference(out, involution2d_reference(x, w, 1, 2, 1))


@pytest.mark.parametrize("input_layout", ["nchw", "nhwc"])
def test_gradcheck_float64(input_layout: str) -> None:
    gen = torch.Generator().manual_seed(6)
    x, w = make_case(1, 6, 2, (3, 3), (5, 7), stride=(2, 1), padding=(1, 2), dilation=(1, 2), dtype=torch.float64,
                     generator=gen)
    if input_layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w.requires_grad_()
    geo = ((2, 1), (1, 2), (1, 2))
    with use_backend("cpu"), cpu_kernel_calls() as calls:
        assert torch.autograd.gradcheck(lambda x, w: involution.involution2d(x, w, *geo), (x, w))
        assert torch.autograd.gradgradcheck(lambda x, w: involution.involution2d(x, w, *geo), (x, w))
    # gradcheck's output gradients are contiguous, so grad_input always runs the NCHW kernel
    expected = set(PASSES) if input_layout == "nchw" else {"forward", "backward_weight"}
    assert _ran(calls, input_layout) == expected
    assert "backward_input" in _ran(calls, "nchw")


@pytest.mark.parametrize("input_layout", ["nchw", "nhwc"])
def test_results_do_not_depend_on_the_thread_count(input_layout: str) -> None:
    """Every task writes its own part of each result in a fixed order: 1 and 2 threads give the same bits."""
    gen = torch.Generator().manual_seed(7)
    x0, w0 = make_case(1, 32, 2, (7, 7), (13, 19), padding=(3, 3), generator=gen)
    fmt = torch.channels_last if input_layout == "nhwc" else torch.contiguous_format
    gy = torch.randn(1, 32, 13, 19, generator=gen).contiguous(memory_format=fmt)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            x = x0.contiguous(memory_format=fmt).requires_grad_()
            w = w0.clone().requires_grad_()
            with use_backend("cpu"):
                out = involution.involution2d(x, w, 1, 3, 1)
                results.append((out, *torch.autograd.grad(out, (x, w), gy)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
