"""What the native (C++) kernels are compiled with; shared by the PyTorch extension and the onnxruntime library."""

from __future__ import annotations

import torch


def simd_flags() -> list[str]:
    """gcc flags for the vector instructions this CPU runs (AVX2 + FMA where PyTorch reports AVX2 or AVX-512).

    AVX2 rather than AVX-512 everywhere: it is safe on both, and the kernels are written for 8-float vectors.
    """
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    return ["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []
