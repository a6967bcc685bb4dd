"""RedNet's bottleneck adds the identity in place (issue 28: the out-of-place add was a tenth of a bfloat16 forward)
and computes what the out-of-place ``relu(bn3(conv3(...)) + identity)`` does, values and gradients, trained, in
eval and with its BatchNorms folded into the convolutions."""

from __future__ import annotations

import pytest
import torch
from model_weights import randomise_weights
from torch.profiler import ProfilerActivity, profile

from involution.layers.fuse import fuse_conv_bn_
from involution.models import RedNetBottleneck


def _block(downsample: bool) -> RedNetBottleneck:
    shortcut = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1, stride=2, bias=False), torch.nn.BatchNorm2d(32))
    block = RedNetBottleneck(16 if downsample else 32, 8, stride=2 if downsample else 1,
                             downsample=shortcut if downsample else None, group_channels=4)
    return randomise_weights(block).double()


def _out_of_place(block: RedNetBottleneck, x: torch.Tensor) -> torch.Tensor:
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return torch.relu(block.bn3(block.conv3(out)) + identity)


def _aten_ops(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize("downsample", [False, True], ids=["identity", "downsample"])
def test_identity_added_in_place(downsample: bool) -> None:
    block = _block(downsample)
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)
    for mode in ("train", "eval"):
        block.train(mode == "train")
        ops = _aten_ops(lambda: block(x))
        assert "aten::add_" in ops and "aten::add" not in ops, (mode, sorted(set(ops)))


@pytest.mark.parametrize("downsample", [False, True], ids=["identity", "downsample"])
def test_training_values_and_gradients_match_the_out_of_place_add(downsample: bool) -> None:
    block = _block(downsample).train()
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)
    results = []
    for forward in (block, lambda t: _out_of_place(block, t)):
        xx = x.clone().requires_grad_()
        block.zero_grad()
        out = forward(xx)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), xx.grad, [p.grad.clone() for p in block.parameters()]))
    (out, gx, gp), (ref, ref_gx, ref_gp) = results
    assert out.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-12, atol=1e-12)
    for g, r in zip(gp, ref_gp):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_folded_block_matches_and_still_trains() -> None:
    """bn3 folded into conv3 (nn.Identity): the add then writes conv3's output, which its backward does not read."""
    block = _block(downsample=False).eval()
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = _out_of_place(block, x)
    fuse_conv_bn_(block)
    assert isinstance(block.bn3, torch.nn.Identity)
    xx = x.clone().requires_grad_()
    out = block(xx)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), ref, rtol=1e-10, atol=1e-10)
    assert xx.grad is not None and block.conv3.weight.grad is not None
