"""The ``"triton"`` backend seam (GPU kernels in Triton).

The kernels themselves are the subject of their own issue; until they land this backend reports itself
unavailable, so CUDA tensors run on the ``"torch"`` backend and ``use_backend("triton")`` raises a clear error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._shapes import Pair
from . import register_backend


class TritonBackend:
    name = "triton"

    def is_available(self) -> bool:
        return False

    def unavailable_reason(self) -> str:
        return "not implemented yet: the Triton kernels are tracked in their own issue"

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def _missing(self, *args: object) -> None:
        raise NotImplementedError(self.unavailable_reason())

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        self._missing()

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        self._missing()

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        self._missing()


register_backend(TritonBackend())
