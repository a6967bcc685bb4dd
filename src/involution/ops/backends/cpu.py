"""The ``"cpu"`` backend: compiled C++ kernels (placeholder until the extension lands)."""

from __future__ import annotations

import torch

from . import register_backend
from .torch_impl import TorchBackend


class CpuBackend(TorchBackend):
    name = "cpu"

    def is_available(self) -> bool:
        return False

    def supports(self, device: torch.device) -> bool:
        return device.type == "cpu"


register_backend(CpuBackend())
