"""The ``"triton"`` backend's 3-D kernels (``triton_kernels3d.py``) against the float64 reference.

As in ``test_triton_backend.py``: without a GPU the kernels run on CPU tensors in Triton's interpreter, in a child
process (``triton_interpreter.py``), so the volumes are tiny, chosen to hit the edges of its 64-voxel x 8-channel
tile (ragged channel and voxel blocks, taps in the padding, voxels no output reads). Forward and both gradients of
``involution3d`` for NCDHW and NDHWC features and for contiguous weights and the view of a channels_last_3d
generator output; float32 to rounding, bfloat16/float16 within the float32-accumulation bound.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from involution.ops import involution3d, output_size, use_backend
from involution.ops.backends import get_backend
from backend_requirements import skip_or_fail
from op_helpers import assert_matches_reference, assert_op_accumulates_in_float32
from reference import involution_nd_reference_and_grads
from triton_interpreter import DEVICE, IN_PROCESS, ON_GPU, in_process, not_in_process, run_in_interpreter

if importlib.util.find_spec("triton") is None:  # not imported here: the child process must import it first
    skip_or_fail("the test dependency 'triton' is not installed (it comes with torch on Linux)")

BACKEND = get_backend("triton")
if IN_PROCESS and not BACKEND.is_available():
    skip_or_fail(f"the triton backend cannot run here: {BACKEND.unavailable_reason()}")

needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
KERNELS = ["involution3d_fwd_kernel", "involution3d_bwd_input_kernel", "involution3d_bwd_weight_kernel"]


@not_in_process
def test_kernels3d_in_the_triton_interpreter() -> None:
    """Without a GPU: every test below, on CPU tensors, in a fresh process with Triton's interpreter on."""
    run_in_interpreter(__file__)


# ------------------------------------------------------------------------------------------------- helpers
# (C, G, size, kernel, stride, padding, dilation), each with its (feature layout, weight layout).
CASES = {
    # C/G = 8: one full channel block; 60 voxels in and out: one ragged block; 27 taps, most in the padding
    "k333-pad1": ((16, 2, (3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)), ("ncdhw", "contiguous")),
    # C/G = 12: a full and a ragged channel block; 84 output / 168 input voxels: two and three blocks
    "k132-strided-dilated": (
        (12, 1, (4, 6, 7), (1, 3, 2), (1, 2, 1), (0, 1, 1), (1, 1, 2)), ("ndhwc", "generator")
    ),
    # C/G = 2 with three groups; stride 2 in depth and width leaves input voxels no output reads
    "k213-G3-stride2-dil2": (
        (6, 3, (5, 5, 6), (2, 1, 3), (2, 1, 2), (1, 0, 1), (2, 1, 1)), ("ndhwc", "contiguous")
    ),
    # C/G = 5 (not a power of two), padding on two axes only, dilation in height
    "k322-C5-G1": ((5, 1, (4, 3, 5), (3, 2, 2), (1, 1, 1), (1, 1, 0), (1, 2, 1)), ("ncdhw", "generator")),
}


def _case(geometry: tuple, dtype: torch.dtype, layout: str, weight_layout: str, seed: int = 0):
    """Contiguous CPU input (N, C, D, H, W), weight (N, G, Kd, Kh, Kw, Do, Ho, Wo) and grad_output, float64 values
    rounded to ``dtype``; the same on DEVICE laid out as asked; and (stride, padding, dilation)."""
    c, g, size, kernel, stride, padding, dilation = geometry
    out = tuple(output_size(*a) for a in zip(size, kernel, stride, padding, dilation))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, *size, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(2, g, *kernel, *out, generator=gen, dtype=torch.float64).to(dtype)
    gy = torch.randn(2, c, *out, generator=gen, dtype=torch.float64).to(dtype)
    xd, wd, gyd = x.to(DEVICE), w.to(DEVICE), gy.to(DEVICE)
    if layout == "ndhwc":
        xd, gyd = (t.contiguous(memory_format=torch.channels_last_3d) for t in (xd, gyd))
    if weight_layout == "generator":  # what Involution3d's channels_last_3d kernel generator hands the op
        wd = wd.flatten(1, 4).contiguous(memory_format=torch.channels_last_3d).unflatten(1, (g, *kernel))
    return (x, w, gy), (xd, wd, gyd), (stride, padding, dilation)


def _run(case: tuple, dtype: torch.dtype, layouts: tuple[str, str] | None = None, seed: int = 0):
    """Forward and both gradients of ``involution3d`` on the triton backend for ``case`` (a value of
    :data:`CASES`; ``layouts`` replaces its layouts), with the 2-D
    kernels switched off (so the 3-D kernels, not the depth-tap sums, ran): the CPU inputs, the geometry and the
    results on CPU."""
    geometry, case_layouts = case
    layout, weight_layout = layouts or case_layouts
    inputs, (x, w, gy), conv = _case(geometry, dtype, layout, weight_layout, seed)
    x, w = x.requires_grad_(), w.requires_grad_()
    with use_backend("triton"), pytest.MonkeyPatch.context() as mp:
        for kernel in ("forward", "backward_input", "backward_weight"):
            mp.setattr(BACKEND, kernel, lambda *a, _k=kernel: pytest.fail(f"the 2-D {_k} kernel ran"))
        y = involution3d(x, w, *conv)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    assert y.dtype == gx.dtype == gw.dtype == dtype
    fmt = torch.channels_last_3d if layout == "ndhwc" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt), (y.stride(), gx.stride())
    assert gw.stride() == w.stride()  # the weight's layout, generator view included
    return inputs, conv, (y.detach().cpu(), gx.cpu(), gw.cpu())


# ------------------------------------------------------------------------------------------- against the oracle
@in_process
@pytest.mark.parametrize("name", list(CASES))
def test_float32_matches_reference(name: str) -> None:
    inputs, conv, results = _run(CASES[name], torch.float32)
    expected = involution_nd_reference_and_grads(*inputs, *conv)
    for what, got, ref in zip(("forward", "grad_input", "grad_weight"), results, expected):
        assert_matches_reference(got, ref, msg=f"{what} {name}")


@in_process
@pytest.mark.parametrize("name", ["k333-pad1", "k132-strided-dilated"])
@pytest.mark.parametrize(
    "dtype, layouts",
    [(torch.bfloat16, ("ndhwc", "generator")), (torch.float16, ("ncdhw", "contiguous"))],
    ids=["bfloat16-NDHWC", "float16-NCDHW"],
)
def test_low_precision_accumulates_in_float32(name: str, dtype: torch.dtype, layouts: tuple[str, str]) -> None:
    """Every element within half an ulp of its own value (plus the float32 sum's bound) of the exact sum of the
    rounded inputs: forward and grad_input sum all Kd*Kh*Kw taps in float32 (27 for k333), grad_weight the group's
    channels. The interpreter truncates float32 to bfloat16 when storing: a full ulp."""
    inputs, conv, results = _run(CASES[name], dtype, layouts, seed=1)
    truncates = dtype == torch.bfloat16 and BACKEND._load().INTERPRETED
    assert_op_accumulates_in_float32(results, *inputs, conv, rounding_ulps=1.0 if truncates else 0.5, msg=name)


@in_process
def test_gradcheck_through_the_op() -> None:
    """float64 gradcheck (fast mode) of forward and both gradients on the 3-D kernels."""
    _, (x, w, _), conv = _case((4, 2, (3, 4, 3), (2, 3, 2), (1, 2, 1), (1, 1, 0), (1, 1, 2)), torch.float64,
                               "ncdhw", "contiguous")
    with use_backend("triton"):
        assert torch.autograd.gradcheck(lambda x, w: involution3d(x, w, *conv), (x.requires_grad_(),
                                        w.requires_grad_()), fast_mode=True)


# ---------------------------------------------------------------------------------------------- autotuning
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@in_process
def test_autotune_key_is_the_shape_class_not_the_size() -> None:
    assert BACKEND._load() is not None
    for name in KERNELS:
        keys = getattr(BACKEND._kernels3d, name).keys
        assert not {"D", "H", "W", "DO", "HO", "WO"} & set(keys), keys
        assert {"KD", "SD", "IN_PIX_CLASS", "OUT_PIX_CLASS", "LAYOUT_CLASS"} <= set(keys), keys


@in_process
def test_every_tuned_tile_gives_the_same_bits() -> None:
    """Each candidate tile, forced in turn on the three 3-D kernels, gives bit-identical results (C/G = 12 and 84
    output voxels leave ragged blocks for every tile)."""
    import triton

    kernels = BACKEND._load()
    tiles = [*kernels._GPU_TILES, kernels._INTERPRETER_TILE]
    results = []
    for block_p, block_c, warps in tiles:
        config = triton.Config({"BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=warps)
        with pytest.MonkeyPatch.context() as mp:
            for name in KERNELS:
                mp.setattr(getattr(BACKEND._kernels3d, name), "configs", [config])
            results.append(_run(CASES["k132-strided-dilated"], torch.float32)[2])
    for tile, got in zip(tiles[1:], results[1:]):
        for first, other, what in zip(results[0], got, ("forward", "grad_input", "grad_weight")):
            assert torch.equal(_bits(first), _bits(other)), f"{what}: tile {tile} differs from {tiles[0]}"


# ---------------------------------------------------------------------------------------------- GPU only
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_video_shape_matches_reference_deterministically(dtype: torch.dtype) -> None:
    """A video-sized layer (C/G = 16, 3x3x3 kernel, 8x28x28 clip, NDHWC): the autotuner picks among the GPU tiles,
    and two runs agree bit for bit (no atomics)."""
    case = ((64, 4, (8, 28, 28), (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1)), ("ndhwc", "generator"))
    first, second = (_run(case, dtype) for _ in range(2))
    for a, b in zip(first[2], second[2]):
        assert torch.equal(_bits(a), _bits(b))
    inputs, conv, results = first
    if dtype == torch.float32:
        for got, ref in zip(results, involution_nd_reference_and_grads(*inputs, *conv)):
            assert_matches_reference(got, ref)
    else:
        assert_op_accumulates_in_float32(results, *inputs, conv)
