"""The ``"triton"`` backend: GPU kernels written in Triton (``triton_kernels.py``); the default on CUDA.

Triton is imported lazily, on the first question asked of this backend that needs it, so ``import involution``
works without Triton (or with a broken install): the backend then reports itself unavailable with the reason and
CUDA tensors fall back to the ``"torch"`` backend.

The 2-D and 3-D kernels (``triton_kernels.py``, ``triton_kernels3d.py``: :attr:`TritonBackend.native_3d`) read and
write every tensor through its strides (NCHW, channels_last, a channels_last generator's
output viewed as 6-D, sliced or permuted weights; NCDHW, NDHWC and a channels_last_3d generator's output viewed as
8-D in 3-D: no copies) and accumulate in float32 (float64 for float64).
They are autotuned per shape class (:func:`shape_class`: powers of two of the pixel counts, the layouts), not per
exact size, and every sum is taken in an order that does not depend on the tuned tile, so results are
bit-identical whichever tile a process picked.

With ``TRITON_INTERPRET=1`` in the environment before Triton is first imported (Triton reads it at import, when
``@triton.jit`` decorates, and at launch), Triton runs the kernels in its interpreter, on CPU tensors too:
``with use_backend("triton")`` then runs CPU tensors through the very same kernels, which is how they are tested
on machines without a GPU. The automatic choice never picks this backend for CPU tensors.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from types import ModuleType

import torch
from torch import Tensor

from .._shapes import Pair
from .base import Backend, Triple, register_backend


def _interpret_requested() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's CPU interpreter (the values Triton takes for true)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _strides(t: Tensor) -> tuple[int, ...]:
    # a dimension of size 1 is never stepped over, so its stride (possibly huge or 0) is irrelevant
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def _pixel_class(n_pix: int) -> int:
    """The smallest power of two >= ``n_pix``: image sizes within one such bucket share a tuned tile."""
    return 1 << max(0, n_pix - 1).bit_length()


def _innermost(t: Tensor) -> int:
    """The dimension of ``t`` (after the batch one) with the smallest stride among those longer than 1, the last
    on a tie; 0 when there is none. It tells NCHW (3) from channels_last (1) feature maps, and pixel-major (5)
    from tap-major (3: a generator's channels_last output viewed as 6-D) weights."""
    steps = [(abs(st), -d) for d, (size, st) in enumerate(zip(t.shape, t.stride())) if d > 0 and size > 1]
    return -min(steps)[1] if steps else 0


def shape_class(a: Tensor, w: Tensor, b: Tensor) -> dict[str, int]:
    """The kernels' shape-class arguments, which stand in the autotuner's key for the exact image size and strides:
    ``a`` is the input-sized (N, C, H, W) tensor, ``w`` the (N, G, Kh, Kw, Ho, Wo) one, ``b`` the output-sized
    (N, C, Ho, Wo) one; in 3-D (N, C, D, H, W), (N, G, Kd, Kh, Kw, Do, Ho, Wo) and (N, C, Do, Ho, Wo), the pixel
    counts then counting voxels."""
    return {
        "IN_PIX_CLASS": _pixel_class(math.prod(a.shape[2:])),
        "OUT_PIX_CLASS": _pixel_class(math.prod(b.shape[2:])),
        "LAYOUT_CLASS": _innermost(a) + 8 * _innermost(w) + 64 * _innermost(b),
    }


#: The kernel of each pass, by number of spatial dimensions; the 3-D ones live in ``triton_kernels3d``.
_KERNEL_NAMES = {
    2: {"fwd": "involution_fwd_kernel", "bwd_input": "involution_bwd_input_kernel",
        "bwd_weight": "involution_bwd_weight_kernel"},
    3: {"fwd": "involution3d_fwd_kernel", "bwd_input": "involution3d_bwd_input_kernel",
        "bwd_weight": "involution3d_bwd_weight_kernel"},
}  # fmt: skip


class TritonBackend(Backend):
    name = "triton"
    native_3d = True

    def __init__(self) -> None:
        super().__init__()
        self._kernels: ModuleType | None = None
        self._kernels3d: ModuleType | None = None

    # ------------------------------------------------------------------------------------------ loading
    def _load(self) -> ModuleType | None:
        """The kernels module, imported on first use; None (and the reason in ``_error``) if that failed."""
        with self._lock:
            if self._kernels is None and not self._error:
                try:
                    triton_kernels = importlib.import_module(f"{__package__}.triton_kernels")
                    self._kernels3d = importlib.import_module(f"{__package__}.triton_kernels3d")
                except Exception as exc:  # not installed, or an install that fails on import: fall back, say why
                    self._error = f"could not load the Triton kernels: {type(exc).__name__}: {str(exc).strip()[-500:]}"
                else:
                    self._kernels = triton_kernels
            return self._kernels

    def _interpreted(self) -> bool:
        """Whether the kernels run in Triton's interpreter: TRITON_INTERPRET must be set both when Triton and the
        kernels are imported (``@triton.jit`` reads it then) and when they are launched (Triton reads it again)."""
        kernels = self._kernels
        return _interpret_requested() and (kernels is None or kernels.INTERPRETED)

    def is_available(self) -> bool:
        if not (torch.cuda.is_available() or self._interpreted()):
            return False  # decided without importing triton: `import involution` stays cheap on CPU machines
        return self._load() is not None

    def unavailable_reason(self) -> str:
        if not (torch.cuda.is_available() or self._interpreted()):
            return "no CUDA device (TRITON_INTERPRET=1, set before Triton is imported, runs the kernels on the CPU)"
        self._load()
        return self._error or "available"

    def supports(self, device: torch.device) -> bool:
        if device.type == "cuda":
            return True
        # CPU tensors only through the interpreter; kernels compiled for the GPU cannot read host memory
        return device.type == "cpu" and self._interpreted()

    # ------------------------------------------------------------------------------------------- kernels
    def _launch(
        self,
        kernel_pass: str,
        a: Tensor,
        w: Tensor,
        b: Tensor,
        ptrs: tuple[Tensor, Tensor, Tensor],
        stride: Pair | Triple,
        padding: Pair | Triple,
        dilation: Pair | Triple,
    ) -> None:
        """Run one kernel, ``kernel_pass`` ("fwd", "bwd_input" or "bwd_weight"), 2-D or 3-D as ``a`` is. ``a`` is
        the input-sized (N, C, H, W) tensor, ``w`` the (N, G, Kh, Kw, Ho, Wo) one, ``b`` the output-sized
        (N, C, Ho, Wo) one (in 3-D: (N, C, D, H, W), (N, G, Kd, Kh, Kw, Do, Ho, Wo), (N, C, Do, Ho, Wo)); ``ptrs``
        the kernel's three tensor arguments in its own order.

        grad_weight runs one program per (sample, group, pixel block) that loops over the group's channels; the
        others one per channel block too. The pixel blocks cover ``a`` for grad_input, ``b`` otherwise."""
        kernels = self._load()
        if kernels is None:
            raise RuntimeError(f"the triton involution backend is unavailable: {self._error}")
        for t in ptrs:
            if t.device.type == "cpu" and not kernels.INTERPRETED:
                raise RuntimeError(
                    "the triton involution backend got CPU tensors but its kernels were compiled for the GPU; "
                    "set TRITON_INTERPRET=1 in the environment before Triton is first imported"
                )
            # offsets inside one sample are 32-bit in the kernels (the batch offset is 64-bit)
            if sum((size - 1) * abs(st) for size, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31:
                raise ValueError(
                    f"the triton involution backend needs each sample of a tensor to span < 2**31 elements, got "
                    f"shape {tuple(t.shape)} with strides {t.stride()}; use the 'torch' backend for it"
                )
        dims = a.dim() - 2
        n, c, *in_size = a.shape
        g, kernel_size, out_size = w.shape[1], w.shape[2 : 2 + dims], w.shape[2 + dims :]
        cg = c // g
        if a.numel() == 0 or b.numel() == 0:
            if kernel_pass != "fwd" and ptrs[2].numel():
                ptrs[2].zero_()  # nothing reads these pixels: their gradient is zero
            return
        n_pix = math.prod(in_size if kernel_pass == "bwd_input" else out_size)
        acc = kernels.tl.float64 if a.dtype == torch.float64 else kernels.tl.float32
        module = kernels if dims == 2 else self._kernels3d

        def grid(meta: dict) -> tuple[int]:
            channel_blocks = 1 if kernel_pass == "bwd_weight" else kernels.triton.cdiv(cg, meta["BLOCK_C"])
            return (n * g * channel_blocks * kernels.triton.cdiv(n_pix, meta["BLOCK_P"]),)

        device = contextlib.nullcontext() if a.device.type != "cuda" else torch.cuda.device(a.device)
        with device:
            getattr(module, _KERNEL_NAMES[dims][kernel_pass])[grid](
                *ptrs,
                g, cg, *in_size, *out_size,
                *_strides(a), *_strides(w), *_strides(b),
                *stride, *padding, *dilation,
                **shape_class(a, w, b),
                **dict(zip(("KD", "KH", "KW")[-dims:], kernel_size)), ACC=acc,
            )  # fmt: skip

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        conv = (stride, padding, dilation)
        self._launch("fwd", input, weight, out, (input, weight, out), *conv)

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        ptrs, conv = (grad_output, weight, grad_input), (stride, padding, dilation)
        self._launch("bwd_input", grad_input, weight, grad_output, ptrs, *conv)

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        ptrs, conv = (grad_output, input, grad_weight), (stride, padding, dilation)
        self._launch("bwd_weight", input, grad_weight, grad_output, ptrs, *conv)

    # The 3-D kernels: the same launches with (d, h, w) triples; features and weights read through their strides.
    def forward3d(self, input: Tensor, weight: Tensor, out: Tensor, stride: Triple, padding: Triple,
                  dilation: Triple) -> None:
        self._launch("fwd", input, weight, out, (input, weight, out), stride, padding, dilation)

    def backward_input3d(self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Triple,
                         padding: Triple, dilation: Triple) -> None:
        ptrs, conv = (grad_output, weight, grad_input), (stride, padding, dilation)
        self._launch("bwd_input", grad_input, weight, grad_output, ptrs, *conv)

    def backward_weight3d(self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Triple,
                          padding: Triple, dilation: Triple) -> None:
        ptrs, conv = (grad_output, input, grad_weight), (stride, padding, dilation)
        self._launch("bwd_weight", input, grad_weight, grad_output, ptrs, *conv)


register_backend(TritonBackend())
