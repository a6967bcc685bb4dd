"""The ``"triton"`` backend's kernels against the float64 unfold reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter. Triton reads ``TRITON_INTERPRET`` when it
is first imported (and ``torch.compile`` imports it), so setting the variable inside a test process that may have
imported Triton already does not work: without a GPU, :func:`test_kernels_in_the_triton_interpreter` runs this
file again in a child process with ``TRITON_INTERPRET=1`` (``triton_interpreter.py``), where the other tests run
(they skip in the parent).
Setting ``TRITON_INTERPRET=1`` yourself runs them in-process. The interpreter costs milliseconds per kernel
statement, so the shapes are tiny, chosen to hit the edges of its single 64-pixel x 8-channel tile: ragged
channel blocks, several pixel blocks, taps in the padding. With a GPU the same tests run on CUDA tensors with the
compiled, autotuned kernels, and so do the GPU-only tests at the end (they skip without one).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import involution
from involution.ops import backend_status, use_backend
from involution.ops.backends import get_backend, select_backend
from involution.ops.backends.triton_impl import TritonBackend, shape_class
from backend_requirements import skip_or_fail
from op_helpers import assert_matches_reference, assert_op_accumulates_in_float32, is_channels_last, make_case
from reference import involution2d_reference, reference_grads
from triton_interpreter import DEVICE, IN_PROCESS, ON_GPU, in_process, not_in_process, run_in_interpreter

if importlib.util.find_spec("triton") is None:  # not imported here: the child process must import it first
    skip_or_fail("the test dependency 'triton' is not installed (it comes with torch on Linux)")

BACKEND = get_backend("triton")
if IN_PROCESS and not BACKEND.is_available():
    skip_or_fail(f"the triton backend cannot run here: {BACKEND.unavailable_reason()}")

needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


@not_in_process
def test_kernels_in_the_triton_interpreter() -> None:
    """Without a GPU: every test below, on CPU tensors, in a fresh process with Triton's interpreter on."""
    run_in_interpreter(__file__)


# ------------------------------------------------------------------------------------------------- helpers
def _input_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _weight_layout(w: torch.Tensor, layout: str) -> torch.Tensor:
    """``w`` (values unchanged) as a differentiable tensor with the given strides, on ``w``'s device."""
    if layout == "generator":  # a channels_last (N, G*Kh*Kw, Ho, Wo) generator output viewed as 6-D
        return w.flatten(1, 3).contiguous(memory_format=torch.channels_last).requires_grad_().unflatten(1, w.shape[1:4])
    if layout == "sliced":  # not dense: every other column of a wider tensor
        return torch.stack([w, torch.zeros_like(w)], -1).flatten(-2).requires_grad_()[..., ::2]
    if layout == "permuted":  # dense, stored as (N, Ho, Wo, G, Kh, Kw)
        return w.permute(0, 4, 5, 1, 2, 3).contiguous().requires_grad_().permute(0, 3, 4, 5, 1, 2)
    return w.clone().requires_grad_()


def _run(case: dict, dtype: torch.dtype, input_layout: str = "contiguous", weight_layout: str = "contiguous"):
    """Forward, grad_input and grad_weight of the triton backend on one random case: returns the contiguous CPU
    inputs (input, weight, grad_output), the geometry and the results (output, grad_input, grad_weight) on CPU."""
    case = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), **case}
    gen = torch.Generator().manual_seed(0)
    x0, w0 = make_case(**case, dtype=dtype, generator=gen)
    gy = torch.randn(x0.shape[0], x0.shape[1], *w0.shape[-2:], generator=gen, dtype=torch.float64).to(dtype)
    geo = (case["stride"], case["padding"], case["dilation"])

    x = _input_layout(x0.to(DEVICE), input_layout).requires_grad_()
    w = _weight_layout(w0.to(DEVICE), weight_layout)
    assert torch.equal(w.cpu(), w0)
    with use_backend("triton"):
        out = involution.involution2d(x, w, *geo)
        gx, gw = torch.autograd.grad(out, (x, w), gy.to(DEVICE))

    assert out.dtype == gx.dtype == gw.dtype == dtype
    assert is_channels_last(out) == is_channels_last(x), out.stride()
    return (x0, w0, gy), geo, (out.detach().cpu(), gx.cpu(), gw.cpu())


def _check(case: dict, dtype: torch.dtype, input_layout: str = "contiguous", weight_layout: str = "contiguous"):
    """Forward, grad_input and grad_weight of the triton backend against the float64 reference."""
    (x0, w0, gy), geo, (out, gx, gw) = _run(case, dtype, input_layout, weight_layout)
    ref_gx, ref_gw = reference_grads(x0, w0, gy, *geo)
    info = f"case={case} dtype={dtype} layouts={input_layout}/{weight_layout}"
    assert_matches_reference(out, involution2d_reference(x0, w0, *geo), msg=f"forward {info}")
    assert_matches_reference(gx, ref_gx, msg=f"grad_input {info}")
    assert_matches_reference(gw, ref_gw, msg=f"grad_weight {info}")


# ------------------------------------------------------------------------------------------- against the oracle
# Interpreter tile: 64 pixels x 8 channels. Each case names what it covers.
CASES = {
    # C/G = 8: one full channel block; 42 pixels: one ragged pixel block
    "K3-pad": dict(n=2, c=16, g=2, kernel=(3, 3), hw=(6, 7), padding=(1, 1)),
    # C/G = 12: a full and a ragged channel block; grad_input covers 99 pixels in two blocks; all pairs differ
    "K3x5-strided-dilated": dict(
        n=1, c=24, g=2, kernel=(3, 5), hw=(11, 9), stride=(2, 1), padding=(1, 2), dilation=(1, 2)
    ),
    # C/G = 2 with four groups; stride 2 leaves input pixels no output reads (their gradient is zero)
    "K5x3-G4-stride2-dil2": dict(
        n=1, c=8, g=4, kernel=(5, 3), hw=(9, 10), stride=(2, 2), padding=(2, 1), dilation=(2, 2)
    ),
    # the paper's 7x7: 88 output pixels in two blocks, most taps partly in the padding
    "K7-pad3": dict(n=1, c=8, g=1, kernel=(7, 7), hw=(8, 11), padding=(3, 3)),
    # C/G = 20: grad_weight loops over three channel blocks, the last one ragged
    "K3-G1-C20-dil2": dict(n=1, c=20, g=1, kernel=(3, 3), hw=(5, 6), padding=(1, 1), dilation=(2, 2)),
}
LAYOUTS = {  # input layout / weight layout per case, so every layout is met once
    "K3-pad": ("contiguous", "contiguous"),
    "K3x5-strided-dilated": ("channels_last", "generator"),
    "K5x3-G4-stride2-dil2": ("contiguous", "sliced"),
    "K7-pad3": ("channels_last", "permuted"),
    "K3-G1-C20-dil2": ("channels_last", "contiguous"),
}


@in_process
@pytest.mark.parametrize("name", list(CASES))
def test_float32_matches_reference(name: str) -> None:
    _check(CASES[name], torch.float32, *LAYOUTS[name])


@in_process
@pytest.mark.parametrize(
    "dtype, name, layouts",
    [
        (torch.float16, "K3-pad", ("contiguous", "contiguous")),
        (torch.bfloat16, "K3x5-strided-dilated", ("channels_last", "generator")),
    ],
    ids=["float16-NCHW", "bfloat16-NHWC"],
)
def test_low_precision_matches_reference(dtype: torch.dtype, name: str, layouts: tuple[str, str]) -> None:
    """float32 accumulation: only the final rounding (and that of the rounded inputs' reference) is off."""
    _check(CASES[name], dtype, *layouts)


# Long sums, where a kernel that accumulated in bfloat16/float16 would break the bound (its error grows with the
# number of additions) though not the max|ref|-scaled tolerance above; small, for the interpreter. K=7: forward and
# grad_input add 49 products per element; C/G = 64: grad_weight adds 64 (with a 3x3 kernel: the interpreter's
# loops stay short).
LONG_SUMS = {
    "K7-taps": dict(n=1, c=8, g=1, kernel=(7, 7), hw=(6, 6), padding=(3, 3)),
    "CG64-channels": dict(n=1, c=64, g=1, kernel=(3, 3), hw=(5, 6), padding=(1, 1)),
}


@in_process
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(LONG_SUMS))
def test_low_precision_accumulates_in_float32(name: str, dtype: torch.dtype) -> None:
    """Every element within half an ulp of its own value (plus the float32 sum's error bound) of the exact sum of
    the already-rounded inputs. Compiled kernels round to nearest when storing; the interpreter truncates float32
    to bfloat16, a full ulp."""
    inputs, geo, results = _run(LONG_SUMS[name], dtype, "channels_last" if dtype == torch.bfloat16 else "contiguous")
    truncates = dtype == torch.bfloat16 and BACKEND._load().INTERPRETED
    assert_op_accumulates_in_float32(results, *inputs, geo, rounding_ulps=1.0 if truncates else 0.5, msg=name)


@in_process
def test_expanded_weight_and_channel_strided_input() -> None:
    """Zero strides (one kernel shared by the batch) and an input that steps over channels are read in place."""
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(2, 8, 6, 5, generator=gen, dtype=torch.float64).float()
    x = big[:, ::2].to(DEVICE)
    w1 = torch.randn(1, 2, 3, 3, 6, 5, generator=gen, dtype=torch.float64).float().to(DEVICE)
    w = w1.expand(2, -1, -1, -1, -1, -1)
    with use_backend("triton"):
        out = involution.involution2d(x, w, 1, 1)
    assert_matches_reference(out.cpu(), involution2d_reference(x.cpu(), w.cpu(), 1, 1))


@in_process
def test_gradcheck_through_the_op() -> None:
    """float64 gradcheck (fast mode) of forward and both gradients. Double backward composes the same three
    kernels (each checked above), and its formulas are tested with the other backends."""
    gen = torch.Generator().manual_seed(5)
    case = dict(n=1, c=4, g=2, kernel=(3, 2), hw=(5, 4), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    x, w = (t.to(DEVICE).requires_grad_() for t in make_case(**case, dtype=torch.float64, generator=gen))

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return involution.involution2d(x, w, case["stride"], case["padding"], case["dilation"])

    with use_backend("triton"):
        assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)


# ---------------------------------------------------------------------------------------------- autotuning
KERNELS = ["involution_fwd_kernel", "involution_bwd_input_kernel", "involution_bwd_weight_kernel"]


def _dense(shape: tuple[int, ...], order: tuple[int, ...]) -> torch.Tensor:
    """An empty tensor of ``shape`` whose dimensions are laid out from outermost to innermost in ``order``."""
    return torch.empty([shape[d] for d in order]).permute(*[order.index(d) for d in range(len(shape))])


def test_shape_class_buckets_sizes_and_tells_layouts_apart() -> None:
    """The autotuner's stand-in for the exact shape: the next power of two of the input's and the output's pixel
    counts, and which dimension of each tensor is innermost."""
    nchw, nhwc, pixel_major, tap_major = (0, 1, 2, 3), (0, 2, 3, 1), (0, 1, 2, 3, 4, 5), (0, 4, 5, 1, 2, 3)

    def key(hw: tuple[int, int], ohw: tuple[int, int], maps=nchw, weights=pixel_major) -> dict[str, int]:
        a, b = _dense((2, 8, *hw), maps), _dense((2, 8, *ohw), maps)
        return shape_class(a, _dense((2, 2, 3, 3, *ohw), weights), b)

    assert key((5, 6), (5, 6)) == key((4, 8), (4, 8)) == key((1, 17), (3, 9))  # 30, 32 and 17, 27: bucket 32
    assert key((5, 6), (5, 6))["IN_PIX_CLASS"] == 32
    assert key((33, 64), (17, 32)) == key((64, 64), (32, 32))  # the next size in a bucket is not a new key ...
    assert key((64, 65), (32, 32)) != key((64, 64), (32, 32))  # ... the first past a power of two is
    assert key((64, 64), (32, 33)) != key((64, 64), (32, 32))
    pairs = [(maps, weights) for maps in (nchw, nhwc) for weights in (pixel_major, tap_major)]
    layouts = {key((6, 6), (3, 3), maps, weights)["LAYOUT_CLASS"] for maps, weights in pairs}
    assert len(layouts) == 4  # NCHW / channels_last feature maps, pixel-major / tap-major weights


def _tune_keys(case: dict, input_layout: str = "contiguous") -> dict[str, tuple]:
    """The autotuner key each kernel gets in forward and backward of ``case``, taken from its arguments the way
    Triton takes it (Triton then adds the tensors' dtypes)."""
    kernels = BACKEND._load()
    keys = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in KERNELS:
            tuner = getattr(kernels, name)

            def spy(*args, _tuner=tuner, _name=name, **kwargs):
                named = {**dict(zip(_tuner.arg_names, args)), **kwargs}
                keys[_name] = tuple(named[k] for k in _tuner.keys)
                return type(_tuner).run(_tuner, *args, **kwargs)

            mp.setattr(tuner, "run", spy)
        _run(case, torch.float32, input_layout)
    assert sorted(keys) == sorted(KERNELS)
    return keys


@in_process
def test_autotune_key_is_the_shape_class_not_the_size() -> None:
    """Image sizes in one power-of-two bucket share every kernel's tuned tile; another bucket or layout does not."""
    kernels = BACKEND._load()
    for name in KERNELS:
        tuner = getattr(kernels, name)
        assert not {"H", "W", "HO", "WO"} & set(tuner.keys)
        assert not any(k[:2] in ("a_", "b_", "w_") for k in tuner.keys), tuner.keys  # no exact strides either
    base = dict(n=1, c=4, g=1, kernel=(3, 3), padding=(1, 1))
    keys = _tune_keys({**base, "hw": (5, 6)})  # 30 pixels in and out
    assert _tune_keys({**base, "hw": (4, 8)}) == keys  # 32: the same bucket
    bigger = _tune_keys({**base, "hw": (6, 6)})  # 36: the next bucket
    assert all(bigger[name] != keys[name] for name in KERNELS), (bigger, keys)
    # a channels_last input: forward and grad_weight read it (grad_input gets an NCHW grad_output from _run)
    nhwc = _tune_keys({**base, "hw": (5, 6)}, "channels_last")
    for name in ("involution_fwd_kernel", "involution_bwd_weight_kernel"):
        assert nhwc[name] != keys[name], (nhwc, keys)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@in_process
def test_every_tuned_tile_gives_the_same_bits() -> None:
    """Two processes may tune different tiles: each candidate config, forced in turn on all three kernels, gives
    bit-identical forward and gradients (grad_weight's channel sum has one order whatever BLOCK_C is). C/G = 20
    leaves a ragged channel block for every BLOCK_C."""
    import triton

    kernels = BACKEND._load()
    tiles = [*kernels._GPU_TILES, kernels._INTERPRETER_TILE]
    case = dict(n=1, c=20, g=1, kernel=(3, 3), hw=(5, 7), padding=(1, 1))  # 35 pixels: 2 blocks of 32
    results = []
    for block_p, block_c, warps in tiles:
        config = triton.Config({"BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=warps)
        with pytest.MonkeyPatch.context() as mp:
            for name in KERNELS:
                mp.setattr(getattr(kernels, name), "configs", [config])
            results.append(_run(case, torch.float32, "channels_last")[2])
    for tile, got in zip(tiles[1:], results[1:]):
        for first, other, what in zip(results[0], got, ("forward", "grad_input", "grad_weight")):
            assert torch.equal(_bits(first), _bits(other)), f"{what}: tile {tile} differs from {tiles[0]}"


# ------------------------------------------------------------------------------------------------- routing
@in_process
def test_status_and_device_support() -> None:
    assert backend_status()["triton"] == "available"
    assert BACKEND.supports(torch.device("cuda"))
    # CPU tensors only when the kernels were made for the interpreter
    assert BACKEND.supports(torch.device("cpu")) == BACKEND._load().INTERPRETED
    # the automatic choice never sends CPU tensors to Triton, interpreter or not
    assert select_backend(torch.device("cpu")).name != "triton"
    with use_backend("triton"):
        assert select_backend(DEVICE).name == "triton"


def test_unavailable_when_triton_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing or broken Triton makes the backend unavailable with the reason, never an import error."""
    from involution.ops import backends

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so the backend gets as far as importing
    monkeypatch.delattr(backends, "triton_kernels", raising=False)
    monkeypatch.setitem(sys.modules, "involution.ops.backends.triton_kernels", None)
    fresh = TritonBackend()
    assert not fresh.is_available()
    assert "could not load the Triton kernels" in fresh.unavailable_reason()
    x, w = make_case(1, 2, 1, (3, 3), (4, 4))
    with pytest.raises(RuntimeError, match="could not load the Triton kernels"):
        fresh.forward(x, w, torch.empty(1, 2, 2, 2), (1, 1), (0, 0), (1, 1))


def test_unavailable_without_gpu_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fresh = TritonBackend()
    assert not fresh.is_available()
    assert "no CUDA device" in fresh.unavailable_reason()
    assert not fresh.supports(torch.device("cpu"))


@in_process
def test_compiled_graph_runs_the_kernels() -> None:
    """Under torch.compile the op stays one opaque call (traced with its fake impl) that still reaches Triton."""
    gen = torch.Generator().manual_seed(9)
    x, w = (t.to(DEVICE).requires_grad_() for t in make_case(1, 8, 1, (3, 3), (5, 5), padding=(1, 1), generator=gen))
    fn = torch.compile(lambda x, w: involution.involution2d(x, w, 1, 1).square().sum(), backend="aot_eager")
    calls = []
    original = BACKEND.forward
    with use_backend("triton"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(BACKEND, "forward", lambda *a: (calls.append(1), original(*a))[1])
        loss = fn(x, w)
        loss.backward()
    assert calls, "the compiled graph did not run the triton forward"
    out = involution2d_reference(x.detach().cpu(), w.detach().cpu(), 1, 1)
    assert_matches_reference(loss.detach().cpu(), out.square().sum())


# ---------------------------------------------------------------------------------------------- GPU only
REDNET_STAGE = dict(n=4, c=64, g=4, kernel=(7, 7), hw=(28, 28), padding=(3, 3))  # C/G = 16, as in RedNet


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_rednet_shape_matches_reference(dtype: torch.dtype, layout: str) -> None:
    """A RedNet-sized layer: the autotuner picks among the GPU tiles, every one must be right."""
    _check(REDNET_STAGE, dtype, layout, "generator" if layout == "channels_last" else "contiguous")


@needs_gpu
def test_gpu_default_backend_and_determinism() -> None:
    """CUDA tensors go to Triton by default, and without atomics two runs agree bit for bit."""
    assert select_backend(DEVICE).name == "triton"
    x, w = (t.cuda().requires_grad_() for t in make_case(**{**REDNET_STAGE, "stride": (2, 2)}))
    results = []
    for _ in range(2):
        out = involution.involution2d(x, w, 2, 3)
        results.append((out, *torch.autograd.grad(out, (x, w), torch.ones_like(out))))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_gpu
def test_gpu_inductor_and_autocast() -> None:
    """The layer compiled by inductor under bf16 autocast still runs the op (through Triton) and agrees with eager."""
    layer = involution.Involution2d(32, kernel_size=7).cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = torch.compile(layer)(x)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, rtol=0.1, atol=0.1)  # bf16 convs around it: a smoke check


@in_process
@pytest.mark.parametrize("dims", [1, 3])
def test_1d_and_3d_involution_run_on_the_triton_kernels(dims: int) -> None:
    """involution1d / involution3d reduce to the 2-D op, so the Triton kernels compute them, gradients included."""
    from reference import involution_nd_reference

    gen = torch.Generator().manual_seed(dims)
    size, kernel, out = ((11,), (3,), (6,)) if dims == 1 else ((3, 5, 4), (3, 3, 1), (2, 3, 4))
    stride, padding = ((2,), (1,)) if dims == 1 else ((2, 2, 1), (1, 1, 0))
    x = torch.randn(2, 6, *size, generator=gen).to(DEVICE).requires_grad_()
    w = torch.randn(2, 2, *kernel, *out, generator=gen).to(DEVICE).requires_grad_()
    op = involution.ops.involution1d if dims == 1 else involution.ops.involution3d
    with use_backend("triton"):
        y = op(x, w, stride, padding, (1,) * dims)
        gx, gw = torch.autograd.grad(y.sum(), (x, w))
    xr, wr = x.detach().cpu().double().requires_grad_(), w.detach().cpu().double().requires_grad_()
    expect = involution_nd_reference(xr, wr, stride, padding, (1,) * dims)
    ex, ew = torch.autograd.grad(expect.sum(), (xr, wr))
    for got, want in ((y, expect), (gx, ex), (gw, ew)):
        assert_matches_reference(got.cpu(), want)
