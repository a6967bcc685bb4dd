"""The Involution2d layer: shapes, groups, projection, argument checks, equivariance, gradients and backends."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from involution import Involution2d
from involution.ops import use_backend
from op_helpers import CPU_BACKENDS, assert_matches_reference, is_channels_last
from reference import involution2d_reference


def _randomise_batchnorm(layer: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(0)
    for m in layer.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return layer


# --------------------------------------------------------------------------------------------------- shapes
SHAPE_CASES = [
    # channels, kwargs, input (H, W), expected groups, expected output (Ho, Wo)
    (64, dict(kernel_size=7, stride=2), (15, 15), 4, (8, 8)),
    (64, dict(kernel_size=7, stride=2), (16, 16), 4, (8, 8)),
    (32, dict(kernel_size=3), (10, 7), 2, (10, 7)),
    (16, dict(kernel_size=(3, 5), stride=(2, 1)), (9, 10), 1, (5, 10)),
    (24, dict(kernel_size=3, stride=3, dilation=2, group_channels=8), (7, 11), 3, (3, 4)),
    (8, dict(kernel_size=5, dilation=(2, 1)), (6, 5), 1, (6, 5)),
    (12, dict(kernel_size=1, groups=12), (3, 4), 12, (3, 4)),
    (16, dict(kernel_size=3, stride=2), (1, 1), 1, (1, 1)),
]


@pytest.mark.parametrize("channels, kwargs, hw, groups, out_hw", SHAPE_CASES)
def test_output_and_kernel_shapes(channels, kwargs, hw, groups, out_hw) -> None:
    torch.manual_seed(0)
    layer = _randomise_batchnorm(Involution2d(channels, **kwargs)).eval()
    x = torch.randn(2, channels, *hw)
    out = layer(x)
    assert out.shape == (2, channels, *out_hw)
    stride = layer.stride
    assert out_hw == tuple(math.ceil(s / st) for s, st in zip(hw, stride))  # documented (H/s, W/s) rounded up
    kernel = layer.generate_kernel(x)
    kh, kw = layer.kernel_size
    assert layer.groups == groups
    assert kernel.shape == (2, groups, kh, kw, *out_hw)
    # the layer is exactly the op applied to the generated kernel
    expected = involution2d_reference(x, kernel.detach(), layer.stride, layer.padding, layer.dilation)
    assert_matches_reference(out, expected)


@pytest.mark.parametrize(
    "channels, kwargs, groups",
    [
        (8, {}, 1),  # fewer channels than group_channels: one group
        (15, {}, 1),
        (16, {}, 1),
        (64, {}, 4),
        (48, dict(group_channels=16), 3),
        (48, dict(group_channels=8), 6),
        (20, dict(group_channels=16), 1),
        (8, dict(groups=4), 4),  # explicit groups
        (64, dict(groups=2, group_channels=16), 2),  # groups overrides group_channels
        (6, dict(groups=6), 6),
    ],
)
def test_group_count(channels, kwargs, groups) -> None:
    layer = Involution2d(channels, kernel_size=3, **kwargs)
    assert layer.groups == groups
    assert channels % layer.groups == 0
    assert layer.conv2.conv.out_channels == groups * 9
    assert layer.generate_kernel(torch.randn(1, channels, 4, 4)).shape[1] == groups


def test_reduction_ratio_sets_the_hidden_width() -> None:
    assert Involution2d(64, reduction_ratio=4).conv1.conv.out_channels == 16
    assert Involution2d(64, reduction_ratio=1).conv1.conv.out_channels == 64
    assert Involution2d(3, groups=1, reduction_ratio=4).conv1.conv.out_channels == 1  # max(1, C // r)


@pytest.mark.parametrize("out_channels", [None, 16, 32, 5])
def test_out_channels_projection(out_channels) -> None:
    layer = Involution2d(16, kernel_size=3, stride=2, out_channels=out_channels).eval()
    x = torch.randn(2, 16, 9, 9)
    out = layer(x)
    expected_c = out_channels or 16
    assert out.shape == (2, expected_c, 5, 5)
    assert layer.out_channels == expected_c
    if expected_c == 16:
        assert isinstance(layer.proj, nn.Identity)
    else:
        assert isinstance(layer.proj, nn.Conv2d) and layer.proj.weight.shape == (expected_c, 16, 1, 1)
        aggregated = involution2d_reference(x, layer.generate_kernel(x).detach(), layer.stride, layer.padding, 1)
        expected = torch.nn.functional.conv2d(aggregated, layer.proj.weight.double())
        assert_matches_reference(out, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=16, kernel_size=4), r"kernel_size must be odd"),
        (dict(channels=16, kernel_size=(3, 4)), r"kernel_size must be odd"),
        (dict(channels=16, kernel_size=0), r"kernel_size must be odd and >= 1"),
        (dict(channels=8, groups=3), r"groups=3 must be >= 1 and divide channels=8"),
        (dict(channels=8, groups=0), r"groups=0"),
        (dict(channels=8, groups=16), r"groups=16"),
        (dict(channels=0), r"channels must be >= 1"),
        (dict(channels=16, stride=0), r"stride and dilation must be >= 1"),
        (dict(channels=16, dilation=(1, 0)), r"stride and dilation must be >= 1"),
        (dict(channels=16, reduction_ratio=0), r"reduction_ratio must be >= 1"),
        (dict(channels=16, group_channels=0), r"group_channels must be >= 1"),
    ],
)
def test_invalid_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Involution2d(**kwargs)


def test_non_int_kernel_size_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        Involution2d(16, kernel_size=3.0)


# ------------------------------------------------------------------------------------------ equivariance
@pytest.mark.parametrize("kernel_size, dilation", [(7, 1), (3, 2), ((5, 3), 1)])
@pytest.mark.parametrize("shift", [(2, 3), (-3, 1)])
def test_translation_equivariance(backend: str, kernel_size, dilation, shift) -> None:
    """Stride 1, eval mode: shifting the image shifts the output, away from the borders and the wrap seam."""
    torch.manual_seed(0)
    layer = _randomise_batchnorm(Involution2d(32, kernel_size=kernel_size, dilation=dilation)).eval()
    x = torch.randn(2, 32, 20, 22)
    with use_backend(backend), torch.no_grad():
        out = layer(x)
        out_shifted = layer(torch.roll(x, shifts=shift, dims=(2, 3)))
    expected = torch.roll(out, shifts=shift, dims=(2, 3))
    reach = [layer.padding[0], layer.padding[1]]  # = dilation * (K - 1) // 2, how far a kernel sees
    crop = [reach[a] + abs(shift[a]) for a in range(2)]
    inner = (..., slice(crop[0], -crop[0]), slice(crop[1], -crop[1]))
    assert expected[inner].numel() > 0
    torch.testing.assert_close(out_shifted[inner], expected[inner], rtol=1e-5, atol=1e-5)
    # and the borders do differ (zero padding is not circular), so the crop is not hiding everything
    assert not torch.allclose(out_shifted, expected, rtol=1e-3, atol=1e-3)


# -------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kwargs", [dict(kernel_size=3), dict(kernel_size=5, stride=2, out_channels=24)])
def test_backward_gives_finite_grads_for_every_parameter(backend: str, kwargs) -> None:
    torch.manual_seed(0)
    layer = Involution2d(16, group_channels=8, **kwargs).train()
    x = torch.randn(3, 16, 11, 9, requires_grad=True)
    with use_backend(backend):
        out = layer(x)
        out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    params = dict(layer.named_parameters())
    assert "conv2.conv.bias" in params and "conv1.conv.weight" in params
    for name, p in params.items():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_layer_gradients_match_reference(backend: str) -> None:
    """Gradients reaching the generated kernel and the input through the op equal the reference's."""
    torch.manual_seed(1)
    layer = _randomise_batchnorm(Involution2d(16, kernel_size=3, stride=2, group_channels=8)).eval()
    x = torch.randn(2, 16, 9, 8)
    xa = x.clone().requires_grad_()
    with use_backend(backend):
        layer(xa).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    xb = x.double().requires_grad_()
    layer_d = layer.double()
    out_ref = involution2d_reference(xb, layer_d.generate_kernel(xb), layer.stride, layer.padding, layer.dilation)
    out_ref.sum().backward()
    assert_matches_reference(xa.grad, xb.grad, dtype=torch.float32)
    for name, p in layer_d.named_parameters():
        assert_matches_reference(grads[name], p.grad, dtype=torch.float32, msg=name)


# --------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("stride", [1, 2])
def test_backends_give_the_same_layer_output(stride) -> None:
    torch.manual_seed(0)
    layer = _randomise_batchnorm(Involution2d(32, kernel_size=7, stride=stride)).eval()
    x = torch.randn(2, 32, 15, 13)
    expected = involution2d_reference(x, layer.generate_kernel(x).detach(), layer.stride, layer.padding, 1)
    outs = {}
    for name in CPU_BACKENDS:
        with use_backend(name), torch.no_grad():
            outs[name] = layer(x)
        assert_matches_reference(outs[name], expected, msg=name)
    for name in CPU_BACKENDS:
        torch.testing.assert_close(outs[name], outs["torch"], rtol=1e-5, atol=1e-5)


def test_channels_last_layer(backend: str) -> None:
    """A channels_last model keeps channels_last, reads the generator's NHWC output in place, same numbers."""
    torch.manual_seed(0)
    layer = _randomise_batchnorm(Involution2d(32, kernel_size=3, stride=2)).eval()
    x = torch.randn(2, 32, 11, 12)
    with use_backend(backend), torch.no_grad():
        ref = layer(x)
        layer_cl = layer.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        kernel = layer_cl.generate_kernel(x_cl)
        out = layer_cl(x_cl)
    assert not kernel.is_contiguous()  # a strided 6-D view of the NHWC generator output
    assert is_channels_last(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_extra_repr_and_padding() -> None:
    layer = Involution2d(32, kernel_size=(5, 3), dilation=(1, 2), groups=4)
    assert layer.padding == (2, 2)
    assert "groups=4" in repr(layer) and "kernel_size=(5, 3)" in repr(layer)
