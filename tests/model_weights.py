"""Weights under which a wrong model path gives a wrong answer, for every test that compares two paths of a model.

A freshly built RedNet zero-initialises the last BatchNorm of every residual branch, so its involution layers
contribute exactly nothing to the output: export, compile, checkpoint round trips ... of such a model pass even when
every involution in it is computed wrongly. :func:`weights_matter` gives every floating-point parameter and buffer
random values at a tame scale instead (:func:`randomise_weights`) and centres each BatchNorm on the test's own input
(:func:`center_batch_norms`), so that no ReLU after a BatchNorm zeroes a whole channel. Each path-comparison test
then asserts, on its own input and with its own tolerance, that every involution layer moves the output by more
than ten times that tolerance (:func:`assert_every_involution_matters`): a test cannot miss a layer silently.

Usage::

    x = torch.randn(2, 3, 16, 16)
    model = weights_matter(create_model("rednet26_small"), seed=1, run=lambda m: m(x))
    ...  # compare two paths of model on x with relative error below RTOL
    assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL)
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
#: The smallest relative difference a float32 comparison resolves: an effect below ten times this (relative to the
#: largest output) does not count, even for an exact comparison.
FLOAT32_EPS = torch.finfo(torch.float32).eps

__all__ = [
    "assert_every_involution_matters", "center_batch_norms", "disabled", "involution_layers", "involution_margins",
    "involution_sensitivity", "randomise_weights", "weights_matter",
]

Run = Callable[[nn.Module], Any]
Effect = tuple[str, Tensor, Tensor]


def _fan_in(t: Tensor) -> int:
    return max(1, math.prod(t.shape[1:])) if t.dim() > 1 else 1


def _is_norm(module: nn.Module) -> bool:
    """BatchNorm (any dimension, Sync, torchvision's Frozen), InstanceNorm, GroupNorm or LayerNorm."""
    return hasattr(module, "running_var") or isinstance(module, (nn.GroupNorm, nn.LayerNorm))


def randomise_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every floating-point parameter and buffer of ``model`` set to random values at a tame scale, in place.

    * weights of convolutions and linear layers (``dim > 1``): normal with standard deviation ``1 / sqrt(fan_in)``,
      so activations neither vanish nor explode through a deep network;
    * normalisation scales (``weight`` of dimension 1, FrozenBatchNorm's too): uniform in [0.4, 0.9], never zero,
      so every residual branch adds something;
    * normalisation shifts (``bias``): uniform in [0.05, 0.2], positive, so that once the layer is centred on its
      input (:func:`center_batch_norms`) every channel has positive values for the ReLU after it;
    * other biases and running means: normal, standard deviation 0.1; running variances: uniform in [0.5, 1.5];
    * an involution's kernel generator output (``conv2``) a further ``(Kh * Kw) ** -0.25`` smaller: the
      aggregation sums Kh*Kw taps, and stacked involutions without statistics learnt from data otherwise explode
      (an involutionized ResNet-18 reached inf).

    Integer buffers (``num_batches_tracked``) are left alone. Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    norm_shifts = {f"{name}.bias" for name, m in model.named_modules() if _is_norm(m)}

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
            elif name in norm_shifts:
                value = uniform(t, 0.05, 0.2)
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


def center_batch_norms(model: nn.Module, run: Run) -> nn.Module:
    """Each BatchNorm's running mean set to the per-channel mean of what it receives in ``run(model)``, in place.

    Random running means know nothing of the data: deep in a network, where a channel varies little about a
    constant offset, its BatchNorm output can be negative everywhere, and the ReLU after it zeroes the whole channel
    (fpn_rednet50 at width 1/8, seed 3: every input of ``backbone.layer1.1.conv2`` was zero, so the layer had no
    effect at all). Centred, each channel's output is
    ``(x - mean(x)) * scale + shift`` with a positive shift (:func:`randomise_weights`): the values at or above
    the channel's mean stay positive through the ReLU, on ``run``'s input, in every channel. Layers are centred in
    call order in one pass (each sees its input through the already centred layers before it); a layer called
    twice keeps the first call's mean. Running variances stay random: normalising them too made the networks
    amplify float32 rounding 10 to 10^7 times (measured), where the path comparisons need it to stay below 1.
    ``model`` must be in eval mode. Returns ``model``.
    """
    if model.training:
        raise ValueError("center_batch_norms needs model.eval(): in training mode BatchNorm uses batch statistics")
    pending: dict[nn.Module, Any] = {}

    def center(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()  # (N, C, *)
        dims = [d for d in range(x.dim()) if d != 1]
        module.running_mean.copy_(x.float().mean(dims).to(module.running_mean.dtype))
        pending.pop(module).remove()

    for m in model.modules():
        if isinstance(getattr(m, "running_mean", None), Tensor):
            pending[m] = m.register_forward_pre_hook(center)
    try:
        with torch.no_grad():
            run(model)
    finally:
        for handle in pending.values():
            handle.remove()
    return model


def weights_matter(model: nn.Module, seed: int = 0, *, run: Run | None = None) -> nn.Module:
    """``randomise_weights(model, seed)`` in eval mode, BatchNorms centred on ``run(model)``'s input: the model
    every path-comparison test starts from. Give ``run`` (the test's own forward) wherever the model has
    BatchNorms; without it, a layer can be dead (see :func:`center_batch_norms`)."""
    model = randomise_weights(model, seed).eval()
    return center_batch_norms(model, run) if run is not None else model


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


def _effects(model: nn.Module, run: Run, layers: list[tuple[str, nn.Module]]) -> Iterator[Effect]:
    """``(name, out, |out_without_layer - out|)`` for each of ``layers``, flattened; a non-finite change (the
    output blew up without the layer) counts as an infinite one."""
    with torch.no_grad():
        ref = _flat(run(model))
        for name, layer in layers:
            with disabled(layer):
                changed = _flat(run(model))
            if changed.shape != ref.shape:
                raise ValueError(f"disabling {name} changed the output's size {tuple(ref.shape)} -> "
                                 f"{tuple(changed.shape)}: compare outputs of fixed size (raw head outputs)")
            yield name, ref, torch.nan_to_num((changed - ref).abs(), nan=math.inf)


def involution_sensitivity(model: nn.Module, run: Run) -> dict[str, float]:
    """For each involution layer, the largest change of ``run(model)``'s outputs when that layer outputs zeros,
    relative to the largest output: ``max|out - out_without_layer| / max|out|``."""
    return {name: delta.max().item() / max(ref.abs().max().item(), 1e-12)
            for name, ref, delta in _effects(model, run, involution_layers(model))}


def involution_margins(
    model: nn.Module, run: Run, *, atol: float = 0.0, rtol: float = 0.0, rtol_max: float = 0.0, every: int = 1,
) -> dict[str, float]:
    """For each involution layer, how many times the test's tolerance its removal moves ``run(model)``'s output.

    The tolerance of output element ``i`` is ``atol + rtol * |out_i|`` (``torch.testing.assert_close``'s) plus
    ``rtol_max * max|out|`` (a tolerance relative to the largest output, as in ``max|a - b| / max|b| < rtol_max``)
    plus float32's resolution at that scale; the margin of a layer is the largest ``|out_i - out_without_layer_i|``
    over that. ``every`` > 1 measures every ``every``-th layer only, in ``named_modules`` order (for models where
    one forward per layer costs too much; the first and the last are always measured).
    """
    layers = involution_layers(model)
    chosen = [item for i, item in enumerate(layers) if i % every == 0 or i == len(layers) - 1]
    margins = {}
    for name, ref, delta in _effects(model, run, chosen):
        tol = atol + rtol * ref.abs() + (rtol_max + FLOAT32_EPS) * ref.abs().max()
        margins[name] = torch.where(delta > 0, delta / tol, 0.0).max().item()
    return margins


def assert_every_involution_matters(
    model: nn.Module, run: Run, *, atol: float = 0.0, rtol: float = 0.0, rtol_max: float = 0.0, margin: float = 10.0,
    every: int = 1,
) -> dict[str, float]:
    """Assert that silencing any one involution layer of ``model`` moves ``run(model)``'s output by more than
    ``margin`` times the test's tolerance (see :func:`involution_margins` for ``atol``, ``rtol``, ``rtol_max`` and
    ``every``), so the test's comparison would see that layer computed wrongly; the error names the weakest layer.
    Costs one forward of ``run`` per layer measured. Returns the margins.
    """
    margins = involution_margins(model, run, atol=atol, rtol=rtol, rtol_max=rtol_max, every=every)
    assert margins, f"{type(model).__name__} has no involution layer to measure"
    weakest = min(margins, key=margins.get)
    assert margins[weakest] > margin, (
        f"involution layer {weakest} moves the output by only {margins[weakest]:.3g}x the test's tolerance "
        f"(atol={atol:g}, rtol={rtol:g}, rtol_max={rtol_max:g}); every layer must move it by > {margin:g}x, or a "
        "wrong path through that layer would pass unseen")
    return margins
