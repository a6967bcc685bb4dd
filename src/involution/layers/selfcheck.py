"""A quick check of an installation (``involution info`` prints it): the backends' states, the compiled backend
against the PyTorch fallback on one :class:`Involution2d` layer's input, and that layer's speed next to a depthwise
convolution. It lives with the layers because it needs both the op's backends and a layer that generates kernels."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ops import backend_status, involution2d, use_backend
from .involution import Involution2d

TOLERANCE = 1e-3  # max |compiled - torch| allowed, float32


@dataclass(frozen=True)
class SelfCheck:
    """``backends``: each backend's state ("available" or why not); ``onnxruntime``: the custom-op library's state
    (None without onnxruntime); ``errors``: max |backend - torch| per compiled backend checked, stopping at the first
    over :data:`TOLERANCE`; ``conv_ms``, ``layer_ms``: median ms of a depthwise ``Conv2d(C, C, 7)`` and of
    ``Involution2d(C, 7)`` on the (N, C, H, W) input, channels_last (None when a check failed)."""

    backends: dict[str, str]
    onnxruntime: str | None
    errors: dict[str, float] = field(default_factory=dict)
    conv_ms: float | None = None
    layer_ms: float | None = None

    @property
    def ok(self) -> bool:
        return all(err < TOLERANCE for err in self.errors.values())  # False for a NaN error too


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def self_check(batch: int = 8, channels: int = 64, size: int = 56, repeats: int = 10) -> SelfCheck:
    """Check and time on a seeded (batch, channels, size, size) input (``torch.manual_seed(0)``)."""
    status = backend_status()
    onnxruntime = None
    if importlib.util.find_spec("onnxruntime") is not None:
        from ..ops import onnxruntime_library

        onnxruntime = onnxruntime_library.status()
    torch.manual_seed(0)
    layer = Involution2d(channels, kernel_size=7).eval()
    x = torch.randn(batch, channels, size, size)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        kernel = layer.generate_kernel(x)
        with use_backend("torch"):
            expected = involution2d(x, kernel, padding=3)
        for name in (b for b in ("cpu",) if status.get(b) == "available"):  # the compiled backends
            with use_backend(name):
                errors[name] = (involution2d(x, kernel, padding=3) - expected).abs().max().item()
            if not errors[name] < TOLERANCE:
                return SelfCheck(status, onnxruntime, errors)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        layer_cl = layer.to(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(channels, channels, 7, padding=3, groups=channels, bias=False)
        conv = conv.to(memory_format=torch.channels_last)
        conv_ms, layer_ms = _median_ms(lambda: conv(x_cl), repeats), _median_ms(lambda: layer_cl(x_cl), repeats)
    return SelfCheck(status, onnxruntime, errors, conv_ms, layer_ms)
