"""Recomputation in the backward (``layers.recompute``, RedNet's ``recompute_stem``, grad checkpointing) changes
neither the results nor BatchNorm's running statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from involution import create_model
from involution.layers.recompute import recompute
from model_weights import assert_every_involution_matters, randomise_weights


def step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
    """One training forward + backward: (output, gradients, state dict)."""
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return out.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert all(torch.equal(g, h) for g, h in zip(a[1], b[1]))
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        assert torch.equal(a[2][key], b[2][key]), key


@pytest.mark.parametrize("momentum", [0.1, None])
def test_recompute_updates_running_statistics_once(momentum) -> None:
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU())
    randomise_weights(block).train()
    plain = copy.deepcopy(block)
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = block

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return recompute(self.inner, t)

    wrapped = Wrapped()
    got = step(wrapped, x.clone().requires_grad_())
    want = step(plain, x.clone().requires_grad_())
    assert_same((got[0], got[1], {k.removeprefix("inner."): v for k, v in got[2].items()}), want)
    assert block[1].momentum == momentum  # restored after the backward


@pytest.mark.parametrize("setting", ["recompute_stem", "grad_checkpointing"])
def test_rednet_recomputation_trains_identically(setting) -> None:
    model = randomise_weights(create_model("rednet26_small", num_classes=10, width=0.25)).train()
    model.recompute_stem = False
    other = copy.deepcopy(model)
    if setting == "recompute_stem":
        other.recompute_stem = True
    else:
        other.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert_same(step(other, x), step(model, x))
    assert_every_involution_matters(model, lambda m: m(x))  # the training-mode output, compared exactly


def test_recompute_stem_is_the_default_and_recorded() -> None:
    model = create_model("rednet26_small", num_classes=10, width=0.25)
    assert model.recompute_stem is True
    assert create_model("rednet26_small", num_classes=10, width=0.25, recompute_stem=False).recompute_stem is False
    with pytest.raises(TypeError, match="recompute_stem"):
        create_model("rednet26_small", recompute_stem="no")
