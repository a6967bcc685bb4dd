"""The spatial layers of the "which half of involution matters" study, and Involution2d's coordinate channels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from involution import Involution2d
from involution.layers import (
    SPATIAL_KINDS,
    LocalSelfAttention2d,
    StaticSharedConv2d,
    check_kernel_reach,
    spatial_layer,
)
from involution.layers.involution import coordinate_channels
from involution.models import RedNetBottleneck, create_model
from op_helpers import assert_matches_reference


def _layer(kind: str, channels: int = 8, kernel_size: int = 3, stride: int = 1, **kwargs) -> nn.Module:
    """A small layer of ``kind``: group_channels 4 (so 8 channels make 2 groups), reduction 2."""
    return spatial_layer(kind, channels, kernel_size, stride, 4, 2, nn.BatchNorm2d, True, **kwargs)


# --------------------------------------------------------------------------------------------------- factory
def test_kinds_and_types() -> None:
    assert SPATIAL_KINDS == ("involution", "dynamic", "static_shared", "depthwise", "attention")
    expected = {
        "involution": Involution2d,
        "dynamic": Involution2d,
        "static_shared": StaticSharedConv2d,
        "depthwise": nn.Conv2d,
        "attention": LocalSelfAttention2d,
    }
    for kind, cls in expected.items():
        assert type(_layer(kind)) is cls, kind
    assert _layer("involution").groups == 2
    assert _layer("dynamic").groups == 8
    assert _layer("static_shared").groups == 2
    assert _layer("attention").heads == 2
    assert _layer("depthwise").groups == 8


def test_unknown_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        _layer("conv")
    for kind in SPATIAL_KINDS:
        assert kind in str(info.value)


@pytest.mark.parametrize("kind", ["static_shared", "depthwise", "attention"])
def test_coord_channels_needs_a_generator(kind: str) -> None:
    with pytest.raises(ValueError, match="coord_channels"):
        _layer(kind, coord_channels=True)


# --------------------------------------------------------------------------------------------------- shapes, grads
@pytest.mark.parametrize("kind", SPATIAL_KINDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(7, 9), (8, 5), (1, 2)])
def test_output_shape(kind: str, stride: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = _layer(kind, kernel_size=3, stride=stride).eval()
    out = layer(torch.randn(2, 8, *hw))
    assert out.shape == (2, 8, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", SPATIAL_KINDS)
def test_gradients_reach_every_parameter_and_the_input(kind: str) -> None:
    torch.manual_seed(0)
    layer = _layer(kind, kernel_size=3, stride=2).train()
    x = torch.randn(2, 8, 7, 6, requires_grad=True)
    out = layer(x)
    out.backward(torch.randn_like(out))
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", SPATIAL_KINDS)
def test_channels_last_input(kind: str) -> None:
    torch.manual_seed(0)
    layer = _layer(kind, stride=2).eval()
    x = torch.randn(2, 8, 7, 6)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), layer(x))


# --------------------------------------------------------------------------------------------------- parameter counts
def test_parameter_counts() -> None:
    c, k, g, hidden = 8, 3, 2, 4  # group_channels 4 -> 2 groups; reduction 2 -> hidden width 4

    def count(kind: str, **kwargs) -> int:
        return sum(p.numel() for p in _layer(kind, c, k, **kwargs).parameters())

    generator = c * hidden + 2 * hidden  # conv1 (no bias) + its BatchNorm
    assert count("static_shared") == g * k * k
    assert count("depthwise") == c * k * k  # no bias: the norm after the layer would cancel it
    assert count("attention") == 3 * c * c
    assert count("involution") == generator + hidden * g * k * k + g * k * k
    assert count("dynamic") == generator + hidden * c * k * k + c * k * k
    # the coordinates add 2 input channels to conv1 and nothing else
    assert count("involution", coord_channels=True) == count("involution") + 2 * hidden


# --------------------------------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("stride", [1, 2])
def test_dynamic_is_involution_with_one_group_per_channel(stride: int) -> None:
    torch.manual_seed(0)
    dynamic = _layer("dynamic", kernel_size=3, stride=stride).eval()
    reference = Involution2d(8, kernel_size=3, stride=stride, groups=8, reduction_ratio=2).eval()
    reference.load_state_dict(dynamic.state_dict())  # same module tree, same keys
    x = torch.randn(2, 8, 7, 5)
    torch.testing.assert_close(dynamic(x), reference(x), rtol=0, atol=0)
    assert dynamic.generate_kernel(x).shape == (2, 8, 3, 3, *reference(x).shape[-2:])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_static_shared_is_a_depthwise_conv_with_repeated_weights(stride: int, groups: int) -> None:
    torch.manual_seed(0)
    c, k = 8, 5
    layer = StaticSharedConv2d(c, k, stride, groups)
    depthwise = nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
    with torch.no_grad():
        for ch in range(c):
            depthwise.weight[ch, 0] = layer.weight[ch // (c // groups)]
    x = torch.randn(2, c, 9, 6)
    torch.testing.assert_close(layer(x), depthwise(x))
    assert layer.depthwise_weight().shape == (c, 1, k, k)


def test_static_shared_is_the_same_kernel_everywhere() -> None:
    """Translation equivariance away from the borders: a shifted impulse gives a shifted response."""
    torch.manual_seed(0)
    layer = StaticSharedConv2d(4, 3, 1, 2)
    a = torch.zeros(1, 4, 9, 9)
    a[..., 3, 3] = 1.0
    b = torch.roll(a, shifts=(2, 1), dims=(2, 3))
    torch.testing.assert_close(torch.roll(layer(a), shifts=(2, 1), dims=(2, 3)), layer(b))


# --------------------------------------------------------------------------------------------------- attention
def _attention_reference(layer: LocalSelfAttention2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local self-attention by explicit loops in float64: (output (N, C, Ho, Wo), weights (N, G, K, K, Ho, Wo)).

    For output pixel (i, j) the window is centred on input pixel (i s, j s); taps outside the image take no part.
    The query of (i, j) is the query projection of the mean of the input's s x s block at (i s, j s), clipped at
    the bottom/right edge.
    """
    x = x.double()
    n, c, h, w = x.shape
    k, s, g = layer.kernel_size, layer.stride, layer.heads
    d, r = c // g, k // 2
    wq, wk, wv = (conv.weight.double()[:, :, 0, 0] for conv in (layer.q, layer.k, layer.v))
    keys = torch.einsum("oc,nchw->nohw", wk, x)
    values = torch.einsum("oc,nchw->nohw", wv, x)
    ho, wo = math.ceil(h / s), math.ceil(w / s)
    out = torch.zeros(n, c, ho, wo, dtype=torch.float64)
    weights = torch.zeros(n, g, k, k, ho, wo, dtype=torch.float64)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                block = x[b, :, i * s : (i + 1) * s, j * s : (j + 1) * s].mean(dim=(1, 2))
                query = wq @ block
                for head in range(g):
                    chans = slice(head * d, (head + 1) * d)
                    taps, logits = [], []
                    for u in range(k):
                        for v in range(k):
                            y, xx = i * s + u - r, j * s + v - r
                            if 0 <= y < h and 0 <= xx < w:
                                taps.append((u, v, y, xx))
                                logits.append(query[chans] @ keys[b, chans, y, xx] / math.sqrt(d))
                    probs = torch.softmax(torch.stack(logits), dim=0)
                    for (u, v, y, xx), a in zip(taps, probs):
                        weights[b, head, u, v, i, j] = a
                        out[b, chans, i, j] += a * values[b, chans, y, xx]
    return out, weights


@pytest.mark.parametrize(
    "c, heads, k, stride, hw",
    [(4, 2, 3, 1, (5, 4)), (4, 2, 3, 2, (5, 4)), (6, 3, 5, 2, (4, 7)), (4, 1, 5, 1, (3, 3)), (2, 2, 3, 3, (7, 2))],
)
def test_attention_matches_a_loop_reference(c: int, heads: int, k: int, stride: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(c, k, stride, heads)
    for conv in (layer.q, layer.k, layer.v):  # larger logits than the default init, so the softmax is not flat
        nn.init.normal_(conv.weight, std=1.0)
    x = torch.randn(2, c, *hw)
    expected_out, expected_weights = _attention_reference(layer, x)
    weights = layer.attention_weights(x)
    assert_matches_reference(weights, expected_weights)
    assert_matches_reference(layer(x), expected_out)
    # border taps in the padding get exactly zero weight; every window sums to 1
    assert (weights[..., 0, :, 0, :] == 0).all() and (weights[..., :, 0, :, 0] == 0).all()
    torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.ones_like(weights.sum(dim=(2, 3))))


def test_attention_gradcheck() -> None:
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(4, 3, 2, heads=2).double()
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# --------------------------------------------------------------------------------------------------- coordinates
def test_coordinate_channels_values() -> None:
    grid = coordinate_channels(torch.zeros(2, 3, 3, 5))
    assert grid.shape == (2, 2, 3, 5)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(grid[1, 1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert (grid[:, 0] == grid[:, 0, :, :1]).all() and (grid[:, 1] == grid[:, 1, :1]).all()
    assert (coordinate_channels(torch.zeros(1, 1, 1, 1)) == 0).all()
    cl = coordinate_channels(torch.zeros(1, 3, 4, 4).contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["involution", "dynamic"])
@pytest.mark.parametrize("stride, hw", [(1, (5, 6)), (2, (7, 6))])
def test_coord_channels_make_the_kernel_depend_on_position(kind: str, stride: int, hw: tuple[int, int]) -> None:
    x = torch.full((2, 8, *hw), 0.7)  # a constant image: any change of kernel across pixels comes from position
    torch.manual_seed(0)
    plain = _layer(kind, stride=stride).eval()
    torch.manual_seed(0)
    coords = _layer(kind, stride=stride, coord_channels=True).eval()
    flat = plain.generate_kernel(x)
    torch.testing.assert_close(flat, flat[..., :1, :1].expand_as(flat), rtol=0, atol=0)
    varying = coords.generate_kernel(x)
    assert varying.shape == flat.shape
    assert not torch.allclose(varying, varying[..., :1, :1].expand_as(varying))
    # both rows and columns matter
    assert not torch.allclose(varying[..., 0, :], varying[..., -1, :])
    assert not torch.allclose(varying[..., :, 0], varying[..., :, -1])
    out = coords(x)
    assert out.shape == (2, 8, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))


def test_coord_channels_default_off_changes_nothing() -> None:
    torch.manual_seed(0)
    layer = Involution2d(8, kernel_size=3, group_channels=4)
    assert layer.coord_channels is False and layer.conv1.conv.in_channels == 8
    torch.manual_seed(0)
    explicit = Involution2d(8, kernel_size=3, group_channels=4, coord_channels=False)
    assert list(layer.state_dict()) == list(explicit.state_dict())
    with_coords = Involution2d(8, kernel_size=3, group_channels=4, coord_channels=True)
    assert list(with_coords.state_dict()) == list(layer.state_dict())  # same keys, conv1 is just wider
    assert with_coords.conv1.conv.in_channels == 10
    assert "coord_channels=True" in repr(with_coords)


# --------------------------------------------------------------------------------------------------- RedNet
@pytest.mark.parametrize("kind", SPATIAL_KINDS)
def test_rednet_forward_backward_for_every_kind(kind: str) -> None:
    torch.manual_seed(0)
    model = create_model("rednet26_small", width=0.125, spatial=kind, num_classes=10, in_chans=1)
    blocks = [m for m in model.modules() if isinstance(m, RedNetBottleneck)]
    assert blocks and all(type(b.conv2) is type(_layer(kind)) for b in blocks)
    assert isinstance(model.stem[1], Involution2d)  # the stem keeps its involution
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_rednet_coord_channels() -> None:
    torch.manual_seed(0)
    model = create_model("rednet26_small", width=0.125, coord_channels=True, num_classes=10, in_chans=1)
    blocks = [m for m in model.modules() if isinstance(m, RedNetBottleneck)]
    assert all(b.conv2.coord_channels for b in blocks) and not model.stem[1].coord_channels
    model(torch.randn(2, 1, 9, 7)).sum().backward()
    with pytest.raises(ValueError, match="coord_channels"):
        create_model("rednet26_small", width=0.125, spatial="depthwise", coord_channels=True)


def test_rednet_default_is_unchanged() -> None:
    """``spatial="involution"`` is the default: same modules, same keys, same initial values."""
    torch.manual_seed(0)
    default = create_model("rednet26_small", width=0.125, num_classes=10)
    torch.manual_seed(0)
    explicit = create_model("rednet26_small", width=0.125, num_classes=10, spatial="involution", coord_channels=False)
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert "layer1.0.conv2.conv1.conv.weight" in a and "layer1.0.conv2.conv2.conv.bias" in a


@pytest.mark.parametrize("spatial", ["involution", "static_shared", "attention"])
def test_a_kernel_wider_than_the_input_can_fill_is_refused(spatial):
    """kernel_size=101 on 8x8 digits made each step take seconds: taps beyond 7 pixels read only padding."""
    def model(k):
        return create_model("rednet26_small", num_classes=10, width=0.125, kernel_size=k, spatial=spatial)

    check_kernel_reach(model(7), (8, 8))  # the default: layer4's 1x1 maps under a 7x7 kernel are how it runs
    check_kernel_reach(model(15), (8, 8))  # every tap reaches the 8x8 input somewhere
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2.*17x17.*8x8.*at most 15x15"):
        check_kernel_reach(model(17), (8, 8))
    check_kernel_reach(model(17), (9, 9))
    layer = Involution2d(16, kernel_size=7, dilation=3)  # reach 9: at most 5x5 at dilation 3 for 8x8
    with pytest.raises(ValueError, match=r"7x7 \(dilation 3x3\).*at most 5x5"):
        check_kernel_reach(layer, (8, 8))
