"""Backends of the involution op and the switch that chooses between them.

Every backend (:class:`~.base.Backend`) implements the same three kernels (forward, grad_input, grad_weight)
writing into tensors the op allocated, so the op's output layout never depends on which backend ran, and says
whether it can run given tensors (:meth:`~.base.Backend.can_run`). The user picks one with :func:`use_backend`
(modelled on ``torch.nn.attention.sdpa_kernel``) or leaves the choice to :func:`select_backend`, which takes the
fastest backend that can run the call.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .base import CHOICES, REGISTRY, Backend, register_backend

__all__ = [
    "Backend",
    "available_backends",
    "backend_status",
    "current_backends",
    "get_backend",
    "list_backends",
    "register_backend",
    "select_backend",
    "use_backend",
]

# Preference order when the user has not chosen: compiled code first, the PyTorch fallback last.
_AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")}
_selected: tuple[str, ...] | None = None


def _ensure_registered() -> None:
    if not REGISTRY:
        for module in ("cpu", "torch_impl", "triton_impl"):  # each registers itself
            importlib.import_module(f"{__name__}.{module}")


def list_backends() -> list[str]:
    """Names of every backend this package knows, available here or not."""
    _ensure_registered()
    return sorted(REGISTRY)


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    _ensure_registered()
    return sorted(name for name, b in REGISTRY.items() if b.is_available())


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the known names otherwise."""
    _ensure_registered()
    if name not in REGISTRY:
        raise ValueError(f"unknown involution backend {name!r}; known backends: {sorted(REGISTRY)}")
    return REGISTRY[name]


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


def select_backend(input: Tensor | torch.device, weight: Tensor | None = None) -> Backend:
    """The backend that runs the op on ``input`` and ``weight``: the user's choice if any, else the fastest one that
    can (:meth:`Backend.can_run`). Given a device alone: the one that would run float32 tensors there.

    The choice depends only on the device, the two dtypes and the :func:`use_backend` names in effect, so it is
    remembered per (device, dtypes, names): the op asks on every call."""
    if isinstance(input, torch.device):
        input = torch.empty(0, device=input)
    weight = input if weight is None else weight
    key = (input.device, input.dtype, weight.dtype, _selected)
    backend = CHOICES.get(key)
    if backend is None:
        backend = CHOICES[key] = _choose(input, weight)
    return backend


def _choose(input: Tensor, weight: Tensor) -> Backend:
    """select_backend's choice, made afresh; RuntimeError naming every backend's reason when none can run."""
    _ensure_registered()
    device = input.device
    names = _selected or _AUTO_ORDER.get(device.type, ("torch",))
    reasons: dict[str, str] = {}
    for name in names:
        reason = REGISTRY[name].can_run(input, weight)
        if reason is None:
            if _selected is None and reasons and device.type not in _warned_fallback:
                _warned_fallback.add(device.type)
                warnings.warn(
                    f"involution: the fast '{names[0]}' backend is unavailable on {device.type} "
                    f"({reasons[names[0]]}; see involution.ops.backend_status()); using the slower pure-PyTorch "
                    "fallback",
                    stacklevel=4,
                )
            return REGISTRY[name]
        reasons[name] = reason
    why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    if _selected is not None:
        raise RuntimeError(
            f"none of the selected involution backends {list(_selected)} can run {device.type} tensors here "
            f"({why}); available backends: {available_backends()}"
        )
    raise RuntimeError(f"no involution backend supports device {device} ({why})")


def backend_status() -> dict[str, str]:
    """For each backend, 'available' or the reason it is not (e.g. the compiler error)."""
    _ensure_registered()
    return {name: backend.unavailable_reason() for name, backend in sorted(REGISTRY.items())}
