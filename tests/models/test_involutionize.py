"""involutionize(): replacing the spatial convolutions of torchvision and custom models by involutions (1-D, 2-D, 3-D)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from involution import Involution2d
from involution.models import count_params, involutionizable, involutionize


def _involution_params(c: int, out: int, k: int = 7, gc: int = 16, r: int = 4) -> int:
    """Parameters of Involution2d(c, k, out_channels=out) with BN in the generator, counted by hand."""
    g, hidden = max(1, c // gc), max(1, c // r)
    generator = c * hidden + 2 * hidden + hidden * g * k * k + g * k * k  # conv1, its BN, conv2 + bias
    return generator + (c * out if out != c else 0)


def _conv_params(conv: nn.Conv2d) -> int:
    return sum(p.numel() for p in conv.parameters())


def _expected_params(model: nn.Module, names: list[str]) -> int:
    total = count_params(model)
    for name in names:
        conv = model.get_submodule(name)
        total += _involution_params(conv.in_channels, conv.out_channels) - _conv_params(conv)
    return total


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


def test_resnet18(resnet18):
    model, names = involutionize(resnet18, return_names=True)
    # every 3x3 convolution of the blocks; the 7x7 stem and the 1x1 downsamples stay
    assert names == [f"layer{i}.{b}.conv{j}" for i in range(1, 5) for b in range(2) for j in (1, 2)]
    assert type(model.conv1) is nn.Conv2d and type(resnet18.layer1[0].conv1) is nn.Conv2d  # the original is intact
    pointwise = [n for n, m in resnet18.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert pointwise == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in pointwise)
    for name in names:
        old, new = resnet18.get_submodule(name), model.get_submodule(name)
        assert isinstance(new, Involution2d)
        assert new.stride == old.stride and new.dilation == old.dilation and new.kernel_size == (7, 7)
        assert new.out_channels == old.out_channels and new.channels == old.in_channels
    # layer2.0.conv1 changes 64 -> 128 channels: the involution ends with its 1x1 projection
    assert isinstance(model.layer2[0].conv1.proj, nn.Conv2d) and isinstance(model.layer1[0].conv1.proj, nn.Identity)
    assert count_params(model) == _expected_params(resnet18, names)

    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert y.shape == resnet18(x).shape == (2, 1000)
    y.square().mean().backward()
    inv = model.layer3[1].conv2
    assert inv.conv1.conv.weight.grad is not None and inv.conv2.conv.weight.grad.abs().sum() > 0


def test_conversion_is_reproducible_and_every_involution_matters(resnet18):
    """Two conversions of one network give the same architecture: the weights of one load into the other and give
    the same outputs, with every new involution layer contributing (weights randomised)."""
    from model_weights import assert_every_involution_matters, weights_matter

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = weights_matter(involutionize(resnet18), seed=1, run=lambda m: m(x))
    again = involutionize(resnet18).eval()
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert len(assert_every_involution_matters(model, lambda m: m(x))) == 16  # compared exactly above


def test_resnet50_only_the_3x3_convs():
    torch.manual_seed(0)
    base = torchvision.models.resnet50(weights=None)
    model, names = involutionize(base, return_names=True)
    assert names == [f"layer{i}.{b}.conv2" for i, d in zip(range(1, 5), (3, 4, 6, 3)) for b in range(d)]
    assert all(isinstance(model.get_submodule(n), Involution2d) for n in names)
    strides = {n: model.get_submodule(n).stride for n in names}
    assert strides["layer2.0.conv2"] == (2, 2) and strides["layer2.1.conv2"] == (1, 1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    generator_convs = {id(m.conv1.conv) for m in model.modules() if isinstance(m, Involution2d)}
    assert [m.kernel_size for m in convs if id(m) not in generator_convs] == [(7, 7)]  # only the stem is left
    assert count_params(model) == _expected_params(base, names) == 15_530_356
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def _custom() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # 0: the stem (skipped)
        nn.Conv2d(16, 16, 3, padding=1, bias=False),  # 1: replaced
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 4: replaced, with a projection
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # 5: depthwise, replaced
        nn.Conv2d(32, 32, 1),  # 6: pointwise, kept
        nn.Conv2d(32, 32, 3, padding=2, dilation=2),  # 7: dilated, replaced, dilation kept
        nn.Conv2d(32, 32, 3, padding=0),  # 8: 'valid' padding shrinks the map: kept
        nn.Conv2d(32, 32, 3, padding=1, groups=4),  # 9: grouped, kept
        nn.Conv2d(32, 32, 3, padding="same"),  # 10: replaced
    )


def test_custom_sequential_odd_input():
    torch.manual_seed(0)
    base = _custom()
    model, names = involutionize(base, kernel_size=5, return_names=True)
    assert names == ["1", "4", "5", "7", "10"]
    assert model[7].dilation == (2, 2) and model[7].padding == (4, 4) and model[4].stride == (2, 2)
    assert model[4].out_channels == 32 and model[1].kernel_size == (5, 5)
    for i in (0, 6, 8, 9):
        assert type(model[i]) is nn.Conv2d
    x = torch.randn(2, 3, 15, 13)
    assert model(x).shape == base(x).shape == (2, 32, 6, 5)
    model(x).sum().backward()
    assert all(p.grad is not None for n in names for p in model.get_submodule(n).parameters())


def test_options():
    base = _custom()
    assert involutionize(base, include="1", return_names=True)[1] == ["1"]
    assert involutionize(base, include=["4", "1?"], return_names=True)[1] == ["4", "10"]
    only_dw = involutionize(base, include=lambda name, conv: conv.groups > 1, return_names=True)[1]
    assert only_dw == ["5"]
    assert involutionize(base, allow_projection=False, return_names=True)[1] == ["1", "5", "7", "10"]
    assert involutionize(base, skip_stem=False, min_channels=1, return_names=True)[1][0] == "0"
    own = involutionize(base, kernel_size=None)
    assert own[1].kernel_size == (3, 3)
    assert isinstance(involutionize(base), nn.Sequential) and type(base[1]) is nn.Conv2d
    same = involutionize(base, inplace=True)
    assert same is base and isinstance(base[1], Involution2d)
    with pytest.raises(ValueError, match="kernel_size"):
        involutionize(_custom(), kernel_size=4)


def test_shared_module_mode_and_dtype():
    conv = nn.Conv2d(16, 16, 3, padding=1).double().eval()
    model = nn.Sequential(conv, nn.ReLU(), conv)
    model.eval()
    out, names = involutionize(model, skip_stem=False, return_names=True)
    assert names == ["0", "2"] and out[0] is out[2]
    assert out[0].conv1.conv.weight.dtype == torch.float64 and not out[0].training
    x = torch.randn(1, 16, 9, 9, dtype=torch.float64)
    assert out(x).shape == (1, 16, 9, 9)


def test_involutionizable_reasons():
    assert involutionizable(nn.Linear(4, 4)) == "not an nn.Conv1d, nn.Conv2d or nn.Conv3d"
    assert "1x1" in involutionizable(nn.Conv2d(32, 32, 1))
    assert "grouped" in involutionizable(nn.Conv2d(32, 32, 3, padding=1, groups=2))
    assert "min_channels" in involutionizable(nn.Conv2d(3, 32, 3, padding=1))
    assert "padding" in involutionizable(nn.Conv2d(32, 32, 3))
    assert "allow_projection" in involutionizable(nn.Conv2d(32, 64, 3, padding=1), allow_projection=False)
    assert "even" in involutionizable(nn.Conv2d(32, 32, 2, padding="same"), kernel_size=None)
    assert involutionizable(nn.Conv2d(32, 64, 3, stride=2, padding=1)) is None


# -- 1-D and 3-D ---------------------------------------------------------------------------------------------------


def test_conv1d_and_conv3d_become_involutions_of_their_dimension():
    from involution import Involution1d, Involution3d

    model = nn.Sequential(nn.Conv1d(3, 16, 3, padding=1), nn.Conv1d(16, 32, 5, stride=2, padding=2),
                          nn.Conv3d(32, 32, 3, padding=1), nn.Conv3d(32, 32, (1, 3, 3), padding=(0, 1, 1)))
    converted, names = involutionize(model, kernel_size=None, return_names=True)
    assert names == ["1", "2", "3"]  # the stem ("0") is kept
    assert isinstance(converted[1], Involution1d) and converted[1].stride == (2,) and converted[1].out_channels == 32
    assert isinstance(converted[2], Involution3d) and converted[2].kernel_size == (3, 3, 3)
    assert converted[3].kernel_size == (1, 3, 3) and isinstance(converted[3].conv1.bn, nn.BatchNorm3d)
    assert "1x1" in involutionizable(nn.Conv3d(32, 32, 1)) and "padding" in involutionizable(nn.Conv1d(32, 32, 3))


def test_a_torchvision_video_network_becomes_a_3d_involution_network():
    from torchvision.models.video import r3d_18

    from involution import Involution3d
    from model_weights import involution_sensitivity, randomise_weights

    torch.manual_seed(0)
    model, names = involutionize(r3d_18(num_classes=5), kernel_size=3, return_names=True)
    assert len(names) == 16 and all(isinstance(model.get_submodule(n), Involution3d) for n in names)
    model = randomise_weights(model).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        logits = model(clip)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    model.train()
    model(clip).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the involutions carry the computation: silencing the first one changes the logits
    sensitivity = involution_sensitivity(model.eval(), lambda m: m(clip))
    assert sensitivity[names[0]] > 1e-3
