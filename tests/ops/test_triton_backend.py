"""The ``"triton"`` backend's kernels against the float64 unfold reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter. Triton reads ``TRITON_INTERPRET`` when it
is first imported (and ``torch.compile`` imports it), so setting the variable inside a test process that may have
imported Triton already does not work: without a GPU, :func:`test_kernels_in_the_triton_interpreter` runs this
file again in a child process with ``TRITON_INTERPRET=1``, where the other tests run (they skip in the parent).
Setting ``TRITON_INTERPRET=1`` yourself runs them in-process. The interpreter costs milliseconds per kernel
statement, so the shapes are tiny, chosen to hit the edges of its single 64-pixel x 8-channel tile: ragged
channel blocks, several pixel blocks, taps in the padding. With a GPU the same tests run on CUDA tensors with the
compiled, autotuned kernels, and so do the GPU-only tests at the end (they skip without one).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import involution
from involution.ops import backend_status, use_backend
from involution.ops.backends import get_backend, select_backend
from involution.ops.backends.triton_impl import TritonBackend, _interpret_requested
from op_helpers import assert_matches_reference, is_channels_last, make_case
from reference import involution2d_reference, reference_grads

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ON_GPU = torch.cuda.is_available()
IN_PROCESS = ON_GPU or _interpret_requested()  # else the child process runs the kernel tests
BACKEND = get_backend("triton")
if IN_PROCESS and not BACKEND.is_available():
    pytest.skip(f"the triton backend cannot run here: {BACKEND.unavailable_reason()}", allow_module_level=True)

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
in_process = pytest.mark.skipif(
    not IN_PROCESS, reason="run by test_kernels_in_the_triton_interpreter in a child process (TRITON_INTERPRET=1)"
)
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


@pytest.mark.skipif(IN_PROCESS, reason="the kernel tests run in this process")
def test_kernels_in_the_triton_interpreter() -> None:
    """Without a GPU: every test below, on CPU tensors, in a fresh process with Triton's interpreter on."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    report = f"{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"the interpreter run failed:\n{report}"
    if " passed" not in proc.stdout:  # e.g. a Triton that fails on import: the child skipped the whole module
        pytest.skip(f"the interpreter run skipped every test:\n{report[-2000:]}")


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


def _check(case: dict, dtype: torch.dtype, input_layout: str = "contiguous", weight_layout: str = "contiguous"):
    """Forward, grad_input and grad_weight of the triton backend against the float64 reference."""
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
    ref_gx, ref_gw = reference_grads(x0, w0, gy, *geo)
    info = f"case={case} dtype={dtype} layouts={input_layout}/{weight_layout}"
    assert_matches_reference(out.cpu(), involution2d_reference(x0, w0, *geo), msg=f"forward {info}")
    assert_matches_reference(gx.cpu(), ref_gx, msg=f"grad_input {info}")
    assert_matches_reference(gw.cpu(), ref_gw, msg=f"grad_weight {info}")


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
