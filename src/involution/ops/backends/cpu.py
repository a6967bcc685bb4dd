"""The ``"cpu"`` backend: vectorised C++ kernels (``ops/csrc/involution_cpu.cpp``), compiled on first use.

The extension is built once by ``torch.utils.cpp_extension.load`` and cached in ``TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``) under a name that hashes the source (``involution_cpu.cpp`` and the NCHW
kernels it includes, ``involution_nchw.h``), the flags, the torch version and the Python version
(:func:`extension_name`): environments on one machine never load or overwrite each other's builds. If it cannot be
built (no compiler, ``INVOLUTION_DISABLE_CPU_EXT=1``), the backend reports itself unavailable with the reason and
the op falls back to the ``"torch"`` backend.

Two kernel families, each for float32, float64, bfloat16 and float16, chosen by the feature maps' layout (the input's;
for grad_input, grad_output's, whose layout the op gives grad_input), which the op gives its outputs too
(``empty_features``), so they are written in place. bfloat16/float16 tensors are read as they are (no float32
copy), summed in float32 and rounded once when stored:

* channels_last (NHWC) input: the NHWC kernels. They read a pixel's G*Kh*Kw taps together, so the weight is used
  in place when pixel-major (as a channels_last kernel generator produces it), else permuted once per call. (Their
  grad_input scatters each tap into the sums, which for a 16-bit grad_input are a float32 tensor of the kernel's
  own, rounded into grad_input at the end.)
* any other input (NCHW, or strided): the NCHW kernels (``involution_nchw.h``, shared with the onnxruntime
  library), vectorised along output rows. Their one copy of the input is zero-padded scratch rows, each task's
  own, read from the input through its strides; the weight is read in its contiguous (N, G, Kh, Kw, Ho, Wo) layout
  (a pixel-major or otherwise strided weight, and an expanded or strided grad_output, are made contiguous first).

Both run on torch's intra-op threads (``at::parallel_for``; the extension is built with ``-fopenmp`` where torch's
is OpenMP) and are deterministic: each task writes its own part of a result. Each kernel is a dispatcher op
(``involution_cpu::forward``, ``...::forward_nchw`` ...), so a ``torch.profiler`` profile shows which family ran.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from .._native import simd_flags
from .._shapes import Pair, is_channels_last, is_channels_last_3d
from .base import Backend, Triple, register_backend

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCE = _CSRC / "involution_cpu.cpp"
_SOURCE_3D = _CSRC / "involution3d_cpu.cpp"  # the 3-D op's kernels, in the same extension
_HEADERS = (_CSRC / "involution_nchw.h", _CSRC / "involution_ncdhw.h", _CSRC / "involution_cpu_common.h")  # included by the sources


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where this torch runs at::parallel_for on OpenMP: the loop is a template compiled into the
    extension, and without the flag it runs on the calling thread alone (``torch.set_num_threads`` is ignored).
    The extension then links the libgomp that torch has already loaded."""
    return ["-fopenmp"] if torch._C.has_openmp else []


def _compile_flags() -> list[str]:
    simd = simd_flags()  # cpp_extension adds the C++ standard this torch needs
    # at::vec is scalar unless told which instruction set to use.
    return ["-O3", *simd, *(["-DCPU_CAPABILITY_AVX2"] if simd else []), *_openmp_flags()]


def extension_name(source: bytes, flags: list[str], torch_version: str = torch.__version__) -> str:
    """The build's name: ``involution_cpu_<12 hex digits>``, a hash of everything the compiled library depends on."""
    digest = hashlib.sha256()
    for part in (source, " ".join(flags).encode(), torch_version.encode(), sys.version.encode()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return f"involution_cpu_{digest.hexdigest()[:12]}"


def _is_pixel_major(w: Tensor) -> bool:
    """Whether each pixel's G*Kh*Kw taps of a (N, G, Kh, Kw, Ho, Wo) tensor are contiguous, in (g, u, v) order."""
    _, g, kh, kw, _, _ = w.shape
    return (kw == 1 or w.stride(3) == 1) and (kh == 1 or w.stride(2) == kw) and (g == 1 or w.stride(1) == kh * kw)


class CpuBackend(Backend):
    name = "cpu"
    native_3d = True

    def __init__(self) -> None:
        super().__init__()
        self._loaded: bool | None = None

    # ------------------------------------------------------------------------------------------ building
    def _load(self) -> bool:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._build()
            return self._loaded

    def _build(self) -> bool:
        if os.environ.get("INVOLUTION_DISABLE_CPU_EXT", "") not in ("", "0"):
            self._error = "disabled by INVOLUTION_DISABLE_CPU_EXT"
            return False
        try:
            # Importing cpp_extension logs a CUDA_HOME warning on CUDA builds of torch without a CUDA runtime; it
            # does not concern a CPU-only build.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import cpp_extension

            flags = _compile_flags()
            cpp_extension.load(
                name=extension_name(b"".join(f.read_bytes() for f in (_SOURCE, _SOURCE_3D, *_HEADERS)), flags),
                sources=[str(_SOURCE), str(_SOURCE_3D)],
                extra_cflags=flags,
                extra_ldflags=_openmp_flags(),
                extra_include_paths=[str(_CSRC)],
                is_python_module=False,
                verbose=os.environ.get("INVOLUTION_VERBOSE_BUILD", "") not in ("", "0"),
            )
        except Exception as exc:  # no compiler, no ninja, a broken toolchain: fall back, but say why
            self._error = f"could not build the C++ extension: {type(exc).__name__}: {str(exc).strip()[-2000:]}"
            return False
        return True

    def is_available(self) -> bool:
        return self._load()

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"

    # ------------------------------------------------------------------------------------------- kernels
    @staticmethod
    def _pixel_major(w: Tensor) -> Tensor:
        """``w`` (N, G, Kh, Kw, Ho, Wo) with each pixel's G*Kh*Kw taps contiguous, as a channels_last generator
        produces them (then no copy). The NHWC kernels read a pixel's taps together; one permuted copy costs less
        than reading them scattered."""
        if _is_pixel_major(w):
            return w
        return w.permute(0, 4, 5, 1, 2, 3).contiguous().permute(0, 3, 4, 5, 1, 2)

    @staticmethod
    def _writable(out: Tensor, dtype: torch.dtype, layout: str) -> bool:
        """Whether a kernel can write ``out`` itself: its dtype is ``dtype`` and its layout fits ``layout`` ("any";
        "nchw": contiguous; "nhwc": channel stride 1; "pixel_major": see :func:`_is_pixel_major`)."""
        if out.dtype != dtype:
            return False
        if layout == "nchw":
            return out.is_contiguous()
        if layout == "nhwc":
            return out.stride(1) == 1 or out.shape[1] == 1
        return layout == "any" or _is_pixel_major(out)

    @staticmethod
    def _scratch(out: Tensor, dtype: torch.dtype, layout: str) -> Tensor:
        """An empty tensor of ``out``'s shape, in ``dtype``, laid out as ``layout`` asks ("any" gets NHWC)."""
        if layout == "pixel_major":
            n, g, kh, kw, ho, wo = out.shape
            return torch.empty((n, ho, wo, g, kh, kw), dtype=dtype, device=out.device).permute(0, 3, 4, 5, 1, 2)
        fmt = torch.contiguous_format if layout == "nchw" else torch.channels_last
        return torch.empty(out.shape, dtype=dtype, device=out.device, memory_format=fmt)

    def _run(self, kernel, a: Tensor, b: Tensor, out: Tensor, layout: str, conv: tuple[Pair, Pair, Pair]) -> None:
        """``kernel(a, b, target, *conv)``, ``target`` being ``out`` when the kernel can write it (in ``a``'s dtype
        and ``layout``), else a scratch tensor then copied into ``out``."""
        if self._writable(out, a.dtype, layout):
            kernel(a, b, out, *conv)
            return
        target = self._scratch(out, a.dtype, layout)
        kernel(a, b, target, *conv)
        out.copy_(target)

    # Every tensor reaches the kernels in its own dtype (the op gives input and weight one dtype); the input is read
    # through its strides (NHWC: channel stride 1 already; NCHW: any).
    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        ops, conv = torch.ops.involution_cpu, (stride, padding, dilation)
        if is_channels_last(input):  # the NHWC kernel writes NCHW or NHWC outputs itself
            self._run(ops.forward, input, self._pixel_major(weight), out, "any", conv)
        else:
            self._run(ops.forward_nchw, input, weight.contiguous(), out, "nchw", conv)

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        ops, conv = torch.ops.involution_cpu, (stride, padding, dilation)
        if is_channels_last(grad_input):  # the NHWC kernel reads grad_output in any layout
            self._run(ops.backward_input, grad_output, self._pixel_major(weight), grad_input, "nhwc", conv)
        else:
            self._run(ops.backward_input_nchw, grad_output.contiguous(), weight.contiguous(), grad_input, "nchw", conv)

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        ops, conv = torch.ops.involution_cpu, (stride, padding, dilation)
        if is_channels_last(input):  # written pixel by pixel: computed pixel-major
            self._run(ops.backward_weight, grad_output, input, grad_weight, "pixel_major", conv)
        else:
            self._run(ops.backward_weight_nchw, grad_output.contiguous(), input, grad_weight, "nchw", conv)

    # ---------------------------------------------------------------------------------------------- 3-D kernels
    # involution3d_cpu.cpp: the NDHWC family for channels_last_3d features (all of them with channel stride 1), the
    # NCDHW family for any others (any strides). Both read the weight, and write the weight gradient, through its
    # strides, so a channels_last_3d generator's output is used in place; the op allocates every result in the
    # layout its family writes (empty_volumes, empty_weight_grad), so nothing is copied.
    @staticmethod
    def _channels_inner(t: Tensor) -> Tensor:
        """``t`` with channel stride 1 (a no-op for the channels_last_3d grad_output autograd hands over)."""
        return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last_3d)

    def forward3d(self, input: Tensor, weight: Tensor, out: Tensor, stride: Triple, padding: Triple,
                  dilation: Triple) -> None:
        ops = torch.ops.involution_cpu
        kernel = ops.forward3d if is_channels_last_3d(input) else ops.forward3d_ncdhw
        kernel(input, weight, out, stride, padding, dilation)

    def backward_input3d(self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Triple,
                         padding: Triple, dilation: Triple) -> None:
        ops = torch.ops.involution_cpu
        if is_channels_last_3d(grad_input):
            ops.backward_input3d(self._channels_inner(grad_output), weight, grad_input, stride, padding, dilation)
        else:
            ops.backward_input3d_ncdhw(grad_output, weight, grad_input, stride, padding, dilation)

    def backward_weight3d(self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Triple,
                          padding: Triple, dilation: Triple) -> None:
        ops = torch.ops.involution_cpu
        if is_channels_last_3d(input):
            ops.backward_weight3d(self._channels_inner(grad_output), input, grad_weight, stride, padding, dilation)
        else:
            ops.backward_weight3d_ncdhw(grad_output, input, grad_weight, stride, padding, dilation)


register_backend(CpuBackend())
