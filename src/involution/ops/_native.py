"""What the native (C++) kernels are compiled with; shared by the PyTorch extension and the onnxruntime library."""

from __future__ import annotations

import torch


def simd_flags() -> list[str]:
    """gcc flags for the vector instructions this CPU runs (AVX2 + FMA + F16C where PyTorch reports AVX2 or AVX-512).

    AVX2 rather than AVX-512 everywhere: it is safe on both, and the kernels are written for 8-float vectors. F16C
    (float16 <-> float32 conversions) comes with every AVX2 CPU, and PyTorch's own AVX2 kernels assume it too.
    """
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    return ["-mavx2", "-mfma", "-mf16c"] if capability in ("AVX2", "AVX512") else []
