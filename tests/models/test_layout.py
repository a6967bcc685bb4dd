"""The builder decides the layout: RedNets get NHWC weights (``channels_last=True``, the default), and then run in
channels_last whatever the caller's layout; the model classes never convert anything."""

from __future__ import annotations

import pytest
import torch

from involution import create_model
from involution.models import RedNet
from model_weights import assert_every_involution_matters, involution_layers, randomise_weights, weights_matter

RTOL = 1e-5  # float32 rounding of the two layouts, relative to the largest logit


def is_nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("name", ["rednet26_small", "resnet26_small"])
def test_an_nchw_input_gives_the_same_outputs_in_either_internal_layout(name) -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = weights_matter(create_model(name, num_classes=10, width=0.25, channels_last=False), run=lambda m: m(x))
    model = create_model(name, num_classes=10, width=0.25, channels_last=True).eval()
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        got, want = model(x), plain(x)
        maps, plain_maps = (m.forward_intermediates(x, intermediates_only=True) for m in (model, plain))
    assert ((got - want).abs().max() / want.abs().max()).item() < RTOL
    assert all(is_nhwc(m) for m in maps)
    assert not any(is_nhwc(m) for m in plain_maps)
    if involution_layers(model):
        assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL)


def test_rednet_defaults_to_channels_last_and_resnet_to_the_callers_layout() -> None:
    rednet, resnet = create_model("rednet26_small", num_classes=10), create_model("resnet26_small", num_classes=10)
    assert is_nhwc(rednet.stem[0].conv.weight) and not is_nhwc(resnet.conv1.weight)
    assert "channels_last" not in rednet.model_kwargs  # a builder keyword, as device and dtype: not recorded
    assert not hasattr(rednet, "channels_last")  # the model does not know its layout
    assert is_nhwc(create_model("resnet26_small", channels_last=True).conv1.weight)
    with pytest.raises(TypeError, match="channels_last"):
        create_model("rednet26_small", channels_last="yes")
    with pytest.raises(TypeError, match="channels_last"):
        RedNet(channels_last=True)  # the class takes no layout


def test_a_model_without_nhwc_weights_keeps_the_callers_layout() -> None:
    model = RedNet(layers=(1, 1, 1, 1), width=0.25, num_classes=10, small_input=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not any(is_nhwc(m) for m in model.forward_intermediates(x, intermediates_only=True))
        maps = model.forward_intermediates(x.contiguous(memory_format=torch.channels_last), intermediates_only=True)
    assert all(is_nhwc(m) for m in maps)


def test_training_in_channels_last_matches_nchw() -> None:
    model = randomise_weights(create_model("rednet26_small", num_classes=10, width=0.25))
    plain = create_model("rednet26_small", num_classes=10, width=0.25, channels_last=False)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for m in (model, plain):
        m.train()
        m(x).logsumexp(1).sum().backward()
    # float32 rounding differs between the layouts, and training-mode BatchNorm amplifies it in the gradients
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-3 * q.grad.abs().max(), name
    # every involution moves the training-mode logits the gradients come from (one forward a layer, no backward)
    assert_every_involution_matters(plain, lambda m: m(x), rtol_max=1e-3)


def test_the_builder_lays_out_image_models_only() -> None:
    """A clip model's 5-D weights have no NHWC layout: the video trainer's channels_last gives them NDHWC."""
    assert not create_model("video_rednet_tiny", num_classes=3).model_kwargs.get("channels_last")
    with pytest.raises(ValueError, match="channels_last_3d"):
        create_model("video_rednet_tiny", num_classes=3, channels_last=True)
