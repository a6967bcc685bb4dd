"""Weights under which a wrong model path gives a wrong answer, for every test that compares two paths of a model.

A freshly built RedNet zero-initialises the last BatchNorm of every residual branch, so its involution layers
contribute exactly nothing to the output: export, compile, checkpoint round trips ... of such a model pass even when
every involution in it is computed wrongly. :func:`randomise_weights` gives every floating-point parameter and
buffer random values at a tame scale instead, and :func:`involution_sensitivity` measures how much each involution
layer then matters (tests/models/test_model_weights.py asserts that it is far above every comparison tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from involution import Involution1d, Involution2d, Involution3d

INVOLUTIONS = (Involution1d, Involution2d, Involution3d)

__all__ = ["disabled", "involution_layers", "involution_sensitivity", "randomise_weights", "weights_matter"]


def _fan_in(t: Tensor) -> int:
    return max(1, math.prod(t.shape[1:])) if t.dim() > 1 else 1


def randomise_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every floating-point parameter and buffer of ``model`` set to random values at a tame scale, in place.

    * weights of convolutions and linear layers (``dim > 1``): normal with standard deviation ``1 / sqrt(fan_in)``,
      so activations neither vanish nor explode through a deep network;
    * normalisation scales (``weight`` of dimension 1, FrozenBatchNorm's too): uniform in [0.4, 0.9], never zero,
      so every residual branch adds something;
    * biases and running means: normal, standard deviation 0.1; running variances: uniform in [0.5, 1.5];
    * an involution's kernel generator output (``conv2``) a further ``(Kh * Kw) ** -0.25`` smaller: the
      aggregation sums Kh*Kw taps, and stacked involutions without statistics learnt from data otherwise explode
      (an involutionized ResNet-18 reached inf); the involutions still matter (test_model_weights.py).

    Integer buffers (``num_batches_tracked``) are left alone. Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: Tensor, std: float) -> Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).mul_(std).to(t.dtype)

    def uniform(t: Tensor, low: float, high: float) -> Tensor:
        return torch.rand(t.shape, generator=gen, dtype=torch.float64).mul_(high - low).add_(low).to(t.dtype)

    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                value = uniform(t, 0.5, 1.5)
            elif leaf in ("running_mean", "bias"):
                value = normal(t, 0.1)
            elif t.dim() > 1:
                value = normal(t, 1.0 / math.sqrt(_fan_in(t)))
            else:  # a normalisation layer's scale (or another vector parameter)
                value = uniform(t, 0.4, 0.9)
            t.copy_(value)
        for _, layer in involution_layers(model):
            for p in layer.conv2.parameters():
                p.mul_(math.prod(layer.kernel_size) ** -0.25)
    return model


def involution_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` of every involution layer (1-, 2- or 3-D) in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, INVOLUTIONS)]


@contextmanager
def disabled(layer: nn.Module) -> Iterator[None]:
    """Within the block, ``layer`` outputs zeros of its usual shape (what a broken involution could look like)."""
    handle = layer.register_forward_hook(lambda _m, _args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


def _flat(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out.detach().flatten().float()
    if isinstance(out, dict):
        return torch.cat([_flat(v) for v in out.values()])
    if isinstance(out, (list, tuple)):
        return torch.cat([_flat(v) for v in out])
    raise TypeError(f"cannot flatten a model output of type {type(out).__name__}")


def involution_sensitivity(model: nn.Module, run: Callable[[nn.Module], Any]) -> dict[str, float]:
    """For each involution layer, the largest change of ``run(model)``'s outputs when that layer outputs zeros,
    relative to the largest output: ``max|out - out_without_layer| / max|out|``."""
    with torch.no_grad():
        ref = _flat(run(model))
        scale = max(ref.abs().max().item(), 1e-12)
        result = {}
        for name, layer in involution_layers(model):
            with disabled(layer):
                result[name] = (_flat(run(model)) - ref).abs().max().item() / scale
    return result


def weights_matter(model: nn.Module, seed: int = 0) -> nn.Module:
    """``randomise_weights(model, seed)`` in eval mode: the model every path-comparison test starts from."""
    return randomise_weights(model, seed).eval()
