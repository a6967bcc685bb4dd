"""Backends of the involution op and the switch that chooses between them.

Every backend implements the same three out-of-place-free kernels (forward, grad_input, grad_weight) writing into
tensors the op allocated, so the op's output layout never depends on which backend ran. The user picks one with
:func:`use_backend` (modelled on ``torch.nn.attention.sdpa_kernel``) or leaves the choice to
:func:`select_backend`, which takes the fastest backend available for the device.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from .._shapes import Pair


class Backend(Protocol):
    """What a backend provides. Tensors are ``(N, C, H, W)`` features and ``(N, G, Kh, Kw, Ho, Wo)`` weights."""

    name: str

    def is_available(self) -> bool:
        """Whether it can run on this machine (compiler present, Triton importable, ...)."""

    def supports(self, device: torch.device) -> bool:
        """Whether it runs tensors on ``device``."""

    def forward(self, input: Tensor, weight: Tensor, out: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> None:
        """out[n, c, i, j] = sum_{u,v} weight[n, g(c), u, v, i, j] * input[n, c, i*s - p + u*d, j*s - p + v*d]."""

    def backward_input(
        self, grad_output: Tensor, weight: Tensor, grad_input: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        """Write d(loss)/d(input) into ``grad_input``."""

    def backward_weight(
        self, grad_output: Tensor, input: Tensor, grad_weight: Tensor, stride: Pair, padding: Pair, dilation: Pair
    ) -> None:
        """Write d(loss)/d(weight) into ``grad_weight``."""


_REGISTRY: dict[str, Backend] = {}
# Preference order when the user has not chosen: compiled code first, the PyTorch fallback last.
_AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")}
_selected: tuple[str, ...] | None = None


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` selectable by its name."""
    _REGISTRY[backend.name] = backend
    return backend


def _ensure_registered() -> None:
    if _REGISTRY:
        return
    from . import cpu, torch_impl, triton_impl  # noqa: F401  (each registers itself)


def list_backends() -> list[str]:
    """Names of every backend this package knows, available here or not."""
    _ensure_registered()
    return sorted(_REGISTRY)


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    _ensure_registered()
    return sorted(name for name, b in _REGISTRY.items() if b.is_available())


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the known names otherwise."""
    _ensure_registered()
    if name not in _REGISTRY:
        raise ValueError(f"unknown involution backend {name!r}; known backends: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


@contextlib.contextmanager
def use_backend(backends: str | Sequence[str]) -> Iterator[None]:
    """Run involution with the named backend(s) inside the ``with`` block.

    ``backends`` is a name (``"cpu"``, ``"torch"``, ``"triton"``) or a list tried in order. Unlike the automatic
    choice, an explicit choice never falls back silently: if none of the named backends can run a call, that call
    raises. Nesting works; the innermost choice wins.

    Example::

        with involution.ops.use_backend("torch"):
            y = involution.involution2d(x, w, padding=3)
    """
    global _selected
    names = (backends,) if isinstance(backends, str) else tuple(backends)
    if not names:
        raise ValueError("use_backend needs at least one backend name")
    for name in names:
        get_backend(name)  # unknown names fail here, at the with statement
    previous, _selected = _selected, names
    try:
        yield
    finally:
        _selected = previous


def current_backends() -> tuple[str, ...] | None:
    """The names chosen by the innermost :func:`use_backend`, or None when the choice is automatic."""
    return _selected


_warned_fallback: set[str] = set()


def select_backend(device: torch.device) -> Backend:
    """The backend that runs a call on ``device``: the user's choice if any, else the fastest one available."""
    _ensure_registered()
    if _selected is not None:
        for name in _selected:
            backend = _REGISTRY[name]
            if backend.supports(device) and backend.is_available():
                return backend
        raise RuntimeError(
            f"none of the selected involution backends {list(_selected)} can run on {device.type} here; "
            f"available backends: {available_backends()}"
        )
    order = _AUTO_ORDER.get(device.type, ("torch",))
    for name in order:
        backend = _REGISTRY[name]
        if backend.supports(device) and backend.is_available():
            if name == "torch" and order[0] != "torch" and device.type not in _warned_fallback:
                _warned_fallback.add(device.type)
                warnings.warn(
                    f"involution: the fast '{order[0]}' backend is unavailable on {device.type} "
                    "(see involution.ops.backend_status()); using the slower pure-PyTorch fallback",
                    stacklevel=3,
                )
            return backend
    raise RuntimeError(f"no involution backend supports device {device}")


def backend_status() -> dict[str, str]:
    """For each backend, 'available' or the reason it is not (e.g. the compiler error)."""
    _ensure_registered()
    status = {}
    for name, backend in sorted(_REGISTRY.items()):
        ok = backend.is_available()
        status[name] = "available" if ok else getattr(backend, "unavailable_reason", lambda: "unavailable")()
    return status
