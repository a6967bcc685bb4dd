"""Folding BatchNorm into the convolution before it (``model.fuse()``, ``layers.fuse.fuse_conv_bn_``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from involution import create_model
from involution.layers.fuse import conv_bn_pairs, fuse_conv_bn_
from model_weights import assert_every_involution_matters, involution_layers, weights_matter

RTOL = 1e-5  # float32 rounding of the folded weights, relative to the largest output


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if isinstance(out, dict):
        out = list(out.values())
    return torch.cat([o.flatten() for o in out]) if isinstance(out, (list, tuple)) else out.flatten()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name, kwargs, size", [
    ("rednet26", {}, 64),
    ("rednet50", {"features_only": True, "width": 0.25}, 64),
    ("rednet26_small", {"num_classes": 10, "width": 0.25}, 16),
    ("resnet50", {"width": 0.25}, 64),
    ("rednet26", {"spatial": "depthwise", "width": 0.25}, 64),
])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_model_matches_the_unfused_one(name, kwargs, size, layout) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
    model = weights_matter(create_model(name, **kwargs), run=lambda m: m(x)).to(memory_format=layout)
    fused = copy.deepcopy(model).fuse()
    # Only the BatchNorm after each involution stays: its per-channel scale cannot go into a shared kernel.
    kept = len(involution_layers(model))
    assert batch_norms(fused) == kept < batch_norms(model)
    assert relative_error(outputs(fused, x), outputs(model, x)) < RTOL
    if kept and layout == torch.contiguous_format:  # the layout changes no layer's effect: measured once
        assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL)


def test_every_generator_conv_is_folded() -> None:
    model = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25)).fuse()
    for _, layer in involution_layers(model):
        assert isinstance(layer.conv1.bn, nn.Identity) and layer.conv1.conv.bias is not None


def test_a_segmentor_folds_through_the_generic_function() -> None:
    backbone = {"width": 0.125, "kernel_size": 3}
    x = torch.randn(1, 3, 33, 47, generator=torch.Generator().manual_seed(0))
    model = weights_matter(create_model("fpn_rednet50", backbone_kwargs=backbone, neck_channels=16,
                                        head_channels=8), seed=3, run=lambda m: m(x))
    fused = copy.deepcopy(model)
    assert fuse_conv_bn_(fused) > 0
    assert relative_error(outputs(fused, x), outputs(model, x)) < RTOL
    assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL)


def test_refuses_in_training_mode() -> None:
    model = create_model("rednet26_small", num_classes=10, width=0.25)
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        model.fuse()
    assert batch_norms(model) > 0  # nothing was folded


@pytest.mark.parametrize("conv", ["layer1.0.conv1", "layer1.0.conv2.conv1.conv", "stem.0.conv"])
def test_a_fold_that_drops_the_shift_is_seen(conv) -> None:
    """The weights make the comparison sharp: a fold that forgot the BatchNorm's shift (running mean and bias) in
    one convolution, a generator's included, moves the output far beyond the tolerance."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), run=lambda m: m(x))
    fused = copy.deepcopy(model).fuse()
    with torch.no_grad():
        fused.get_submodule(conv).bias.zero_()
    assert relative_error(outputs(fused, x), outputs(model, x)) > 10 * RTOL


def test_pairs_follow_the_forward() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                        nn.BatchNorm2d(4))
    assert conv_bn_pairs(seq) == [("0", "1")]  # the last BatchNorm follows a ReLU
    block = create_model("rednet26_small", num_classes=10, width=0.25).layer1[0]
    assert conv_bn_pairs(block) == [("conv1", "bn1"), ("conv3", "bn3")]  # conv2 is an involution
