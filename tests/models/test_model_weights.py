"""The weights every model-path comparison test uses (tests/model_weights.py) make each involution layer matter.

If this fails, the path-comparison tests (export, compile, checkpoints, features, grad checkpointing,
involutionize) have silently become unable to see a wrong involution path; each of them also asserts it on its own
input and tolerance (assert_every_involution_matters).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from involution import create_model
from model_weights import (
    assert_every_involution_matters,
    center_batch_norms,
    involution_margins,
    involution_sensitivity,
    randomise_weights,
    weights_matter,
)

# The loosest tolerance of any comparison of two eval-mode model paths in the tests (relative to the largest
# output): a broken involution layer must change the output by at least ten times that.
LOOSEST_TOLERANCE = 1e-4
TINY_FPN = {"backbone_kwargs": {"width": 0.125, "kernel_size": 3}, "neck_channels": 16, "head_channels": 8}
CONFIGS = [
    ("rednet26", {}, (2, 3, 64, 64)),
    ("rednet26_small", {"num_classes": 10, "width": 0.25}, (2, 3, 16, 16)),
    ("rednet50", {"features_only": True, "width": 0.25}, (2, 3, 64, 64)),
    # seed 3 of this one once had a layer of exactly zero effect (every input of backbone.layer1.1.conv2 was zero)
    ("fpn_rednet50", TINY_FPN, (1, 3, 33, 47)),
]


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("name, kwargs, shape", CONFIGS)
def test_every_involution_layer_matters(name, kwargs, shape, seed) -> None:
    x = _input(shape)
    model = weights_matter(create_model(name, **kwargs), seed, run=lambda m: m(x))
    margins = assert_every_involution_matters(model, lambda m: m(x), rtol_max=LOOSEST_TOLERANCE)
    assert len(margins) >= 9


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("name, kwargs, shape", CONFIGS)
def test_no_batchnorm_channel_is_negative_everywhere(name, kwargs, shape, seed) -> None:
    """Centred on the input, every channel of every BatchNorm has a positive value there, so no ReLU after one
    zeroes a whole channel (the cause of the layer of zero effect above)."""
    x = _input(shape)
    model = weights_matter(create_model(name, **kwargs), seed, run=lambda m: m(x))
    highest: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, _args, out: torch.Tensor) -> None:
        highest.setdefault(module, out.detach().transpose(0, 1).flatten(1).amax(1))  # per channel, first call

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    names = {m: name for name, m in model.named_modules()}
    assert highest and [names[m] for m, h in highest.items() if not (h > 0).all()] == []


def test_a_dead_layer_is_named() -> None:
    """A layer whose input a ReLU zeroes (its BatchNorm's shift far below zero) has no effect, and the assertion
    every path test makes names it."""
    x = _input((2, 3, 16, 16))
    model = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), run=lambda m: m(x))
    with torch.no_grad():
        model.layer2[1].bn1.bias.fill_(-100.0)
    assert involution_margins(model, lambda m: m(x))["layer2.1.conv2"] == 0.0
    with pytest.raises(AssertionError, match=r"involution layer layer2\.1\.conv2 moves the output by only 0x"):
        assert_every_involution_matters(model, lambda m: m(x), rtol_max=1e-6)


def test_margins_are_measured_against_the_tests_tolerance() -> None:
    """The margin is the largest change over ``atol + rtol * |out| + rtol_max * max|out|``: halving the tolerance
    doubles it; ``every`` measures a deterministic subset, the first and the last layer included."""
    x = _input((2, 3, 16, 16))
    model = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), run=lambda m: m(x))
    loose = involution_margins(model, lambda m: m(x), atol=2e-3)
    tight = involution_margins(model, lambda m: m(x), atol=1e-3)
    assert loose.keys() == tight.keys() and all(tight[k] == pytest.approx(2 * loose[k], rel=1e-3) for k in loose)
    some = involution_margins(model, lambda m: m(x), atol=1e-3, every=3)
    names = list(tight)
    assert list(some) == names[::3] + ([names[-1]] if (len(names) - 1) % 3 else [])
    with pytest.raises(AssertionError, match="moves the output by only"):
        assert_every_involution_matters(model, lambda m: m(x), atol=1.0)


def test_centering_needs_eval_mode() -> None:
    model = randomise_weights(create_model("rednet26_small", width=0.25)).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        center_batch_norms(model, lambda m: m(torch.randn(2, 3, 16, 16)))


def test_a_fresh_rednet_hides_its_residual_involutions() -> None:
    """Why the helper exists: as built, only the stem's involution reaches the output."""
    torch.manual_seed(0)
    model = create_model("rednet26_small", num_classes=10, width=0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    sensitivity = involution_sensitivity(model, lambda m: m(x))
    blind = [name for name, s in sensitivity.items() if s == 0.0]
    assert len(blind) == len(sensitivity) - 1 and all(name.startswith("layer") for name in blind)


def test_randomise_weights_touches_every_float_tensor_and_is_seeded() -> None:
    a = randomise_weights(create_model("rednet26_small", width=0.25), seed=3)
    b = randomise_weights(create_model("rednet26_small", width=0.25), seed=3)
    fresh = create_model("rednet26_small", width=0.25)
    for (name, t), u, f in zip(a.state_dict().items(), b.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(t, u, rtol=0, atol=0)
        if t.is_floating_point():
            assert not torch.equal(t, f), name
            if name.endswith(("weight", "running_var")):
                assert (t != 0).all(), name
    shifts = [t for name, t in a.state_dict().items() if "bn" in name and name.endswith("bias")]
    assert shifts and all((t > 0).all() for t in shifts)  # what makes centred BatchNorms keep every channel alive
