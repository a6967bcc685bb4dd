"""What a backend of the involution op is, and the registry the backends add themselves to.

Kept apart from the selection logic (``backends/__init__.py``) so that the backend modules, which register
themselves on import, import this module and not the package that imports them.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from .._shapes import FLOATING_DTYPES, Pair

Triple = tuple[int, int, int]


class Backend:
    """A set of kernels for the op. Tensors are ``(N, C, H, W)`` features and ``(N, G, Kh, Kw, Ho, Wo)`` weights.

    Every kernel writes into a tensor the op allocated, so the op's output layout never depends on the backend.
    Subclasses set :attr:`name`, implement the three kernels and :meth:`supports`, and, when they load something
    (a compiled extension, Triton), :meth:`is_available`, keeping the reason it failed in ``self._error``.
    """

    name: str = ""
    #: dtypes the kernels accept (a backend may compute the half-precision ones in float32).
    dtypes: tuple[torch.dtype, ...] = FLOATING_DTYPES
    #: Whether it has 3-D kernels of its own (``forward3d``, ...); without them the 3-D op sums 2-D taps.
    native_3d: bool = False

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the one-time load
        self._error = ""  # why loading failed; empty while it has not (or has not been tried)

    def is_available(self) -> bool:
        """Whether it can run on this machine (compiler present, Triton importable, ...)."""
        return True

    def unavailable_reason(self) -> str:
        """``"available"``, or why the backend cannot run here (e.g. the compiler's error)."""
        return "available" if self.is_available() else self._error or "unavailable"

    def supports(self, device: torch.device) -> bool:
        """Whether it runs tensors on ``device``."""
        raise NotImplementedError

    def can_run(self, input: Tensor, weight: Tensor) -> str | None:
        """None when this backend can run the op on ``input`` and ``weight`` here, else why not. Decided by their
        device and dtypes and by what this machine has (the answer is remembered for them: ``CHOICES``)."""
        if not self.supports(input.device):
            return f"{self.name!r} does not run {input.device.type} tensors here"
        if input.dtype not in self.dtypes or weight.dtype not in self.dtypes:
            return f"{self.name!r} does not run {input.dtype}/{weight.dtype} tensors"
        if not self.is_available():
            return self.unavailable_reason()
        return None

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        """out[n, c, i, j] = sum_{u,v} weight[n, g(c), u, v, i, j] * input[n, c, i*s - p + u*d, j*s - p + v*d]."""
        raise NotImplementedError

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        """Write d(loss)/d(input) into ``grad_input``."""
        raise NotImplementedError

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        """Write d(loss)/d(weight) into ``grad_weight``."""
        raise NotImplementedError

    # The 3-D kernels of a backend with ``native_3d``: features (N, C, D, H, W), weights (N, G, Kd, Kh, Kw, Do, Ho,
    # Wo), the three arguments (d, h, w) triples; the same contracts as the 2-D kernels.
    def forward3d(self, input: Tensor, weight: Tensor, out: Tensor, stride: Triple, padding: Triple,
                  dilation: Triple) -> None:
        raise NotImplementedError

    def backward_input3d(self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Triple,
                         padding: Triple, dilation: Triple) -> None:
        raise NotImplementedError

    def backward_weight3d(self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Triple,
                          padding: Triple, dilation: Triple) -> None:
        raise NotImplementedError


REGISTRY: dict[str, Backend] = {}

#: The backend chosen per (device, input dtype, weight dtype, use_backend names): see ``select_backend``.
CHOICES: dict[tuple, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` selectable by its name (and forget the choices made without it)."""
    REGISTRY[backend.name] = backend
    CHOICES.clear()
    return backend
