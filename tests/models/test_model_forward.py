"""Forward passes on small inputs: classifiers, features_only, small variants, channels_last, checkpointing."""

import pytest
import torch
from involution.models import FeatureInfo, create_model
from model_weights import assert_every_involution_matters, randomise_weights, weights_matter


@pytest.fixture(scope="module")
def rednet26():
    torch.manual_seed(0)
    return create_model("rednet26").eval()


def test_classifier_forward(rednet26):
    with torch.no_grad():
        y = rednet26(torch.randn(1, 3, 64, 64))
        pooled = rednet26.forward_head(rednet26.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert pooled.shape == (1, 2048)


@pytest.mark.parametrize("size", [(64, 64), (97, 113)])
def test_features_only_shapes(size):
    torch.manual_seed(0)
    model = create_model("rednet26", features_only=True).eval()
    info = model.feature_info
    assert isinstance(info, FeatureInfo)
    assert info.channels() == [256, 512, 1024, 2048]
    assert info.reduction() == [4, 8, 16, 32]
    assert info.module_name() == ["layer1", "layer2", "layer3", "layer4"]
    assert info[2]["num_chs"] == 1024 and len(info) == 4 and info.channels(3) == 2048
    h, w = size
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert len(feats) == 4
    for f, c, r in zip(feats, info.channels(), info.reduction()):
        assert f.shape == (1, c, -(-h // r), -(-w // r))  # ceil(size / stride)


def test_features_only_out_indices_prunes_later_stages():
    torch.manual_seed(0)
    model = create_model("rednet26", features_only=True, out_indices=(0, 2)).eval()
    assert model.feature_info.channels() == [256, 1024] and model.feature_info.reduction() == [4, 16]
    assert not hasattr(model, "layer4") and not hasattr(model, "fc")
    assert not any(k.startswith(("layer4.", "fc.")) for k in model.state_dict())
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 16), (1, 1024, 4, 4)]


def test_resnet_features_and_forward():
    model = create_model("resnet26", features_only=True, out_indices=(1, 3)).eval()
    assert model.feature_info.channels() == [512, 2048] and model.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 65, 63))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 9, 8), (1, 2048, 3, 2)]


@pytest.mark.parametrize(
    "name,size",
    [
        ("rednet26_small", 8),
        ("rednet26_small", 32),
        ("resnet26_small", 8),
        ("resnet26_small", 32),
        ("rednet50_small", 8),
    ],
)
def test_small_variants(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width=0.25).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert model.feature_info.reduction() == [1, 2, 4, 8]
    assert model.feature_info.channels() == [64, 128, 256, 512]


def test_small_width_quarter_groups():
    model = create_model("rednet26_small", width=0.25)
    assert model.stem[1].groups == 1 and model.stem[1].channels == 8  # groups = max(1, C // 16)
    assert [s[0].conv2.groups for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [1, 2, 4, 8]
    feats = create_model("rednet26_small", width=0.25, features_only=True).eval()
    with torch.no_grad():
        out = feats(torch.randn(1, 3, 8, 8))
    assert [tuple(f.shape) for f in out] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2), (1, 512, 1, 1)]


def test_num_classes_zero_and_reset_classifier():
    model = create_model("rednet26_small", num_classes=0, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 512)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)
    assert model.pretrained_cfg["num_classes"] == 7


@pytest.mark.parametrize("name", ["rednet26_small", "resnet26_small"])
def test_global_pool_none_returns_the_last_map(name):
    x = torch.randn(2, 3, 16, 16)
    model = randomise_weights(create_model(name, num_classes=0, global_pool="", width=0.25)).eval()
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2) and features.std() > 0
        torch.testing.assert_close(model(x), features, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        create_model(name, num_classes=10, global_pool="", width=0.25)
    with pytest.raises(ValueError, match="'avg' .average pooling. or ''"):
        create_model(name, num_classes=0, global_pool="max", width=0.25)


def test_reset_classifier_switches_pooling():
    x = torch.randn(2, 3, 16, 16)
    model = randomise_weights(create_model("rednet26_small", num_classes=10, width=0.25)).eval()
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0, "")
        assert model.num_classes == 0 and model(x).shape == (2, 512, 2, 2)
        with pytest.raises(ValueError, match="needs num_classes=0"):
            model.reset_classifier(5, "")
        model.reset_classifier(0)  # None keeps the pooling: still none
        assert model(x).shape == (2, 512, 2, 2)
        model.reset_classifier(5)  # a classifier takes pooled features: average pooling comes back
        assert model(x).shape == (2, 5) and model.global_pool_type == "avg"
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled, rtol=0, atol=0)


def test_reset_classifier_follows_the_body():
    """timm's rule: the new head is made on the device and in the dtype of the model, in its training mode."""
    model = create_model("rednet26_small", **{"num_classes": 10, "width": 0.25})
    model.to(device="meta", dtype=torch.float64).eval()
    model.reset_classifier(0)
    model.reset_classifier(3)  # from an Identity: nothing of the old head to copy the placement from
    assert (model.fc.weight.device.type, model.fc.weight.dtype) == ("meta", torch.float64)
    assert not any(m.training for m in model.modules())
    frozen = create_model("rednet26_small", num_classes=10, width=0.25).requires_grad_(False)
    frozen.reset_classifier(0, "")
    assert not any(p.requires_grad for p in frozen.parameters())


def test_channels_last_matches_contiguous():
    x = torch.randn(2, 3, 16, 16)
    model = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), run=lambda m: m(x))
    assert_every_involution_matters(model, lambda m: m(x), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ref = model(x)
        assert ref.abs().max() > 1e-3
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
        _, feats = model.forward_intermediates(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)  # no layout flips on the way


def test_grad_checkpointing_gives_the_same_grads():
    kwargs = {"num_classes": 10, "width": 0.25}
    plain = randomise_weights(create_model("rednet26_small", **kwargs))
    ckpt = create_model("rednet26_small", grad_checkpointing=True, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    x = torch.randn(2, 3, 16, 16)
    for model in (plain, ckpt):
        model.train()
        model(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # every involution moves the training-mode output the gradients come from (a forward a layer, no backward)
    assert_every_involution_matters(plain, lambda m: m(x), rtol=1e-4, atol=1e-6)
    plain.set_grad_checkpointing(True)
    assert plain.grad_checkpointing


def test_resnet_grad_checkpointing():
    model = randomise_weights(create_model("resnet26_small", num_classes=3, width=0.25, grad_checkpointing=True))
    ref = create_model("resnet26_small", num_classes=3, width=0.25)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(model.conv1.weight.grad, ref.conv1.weight.grad, rtol=1e-4, atol=1e-6)


def test_bad_input_rank():
    model = create_model("rednet26_small", width=0.25)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(torch.randn(3, 8, 8))


def test_compiled_rednet_matches_eager_forward_and_gradients():
    """torch.compile (fullgraph, aot_eager: the capture, the op's fake impls and autograd formula) on a RedNet whose
    every involution matters, in eval (forward) and train mode (gradients)."""
    torch._dynamo.reset()
    x = torch.randn(2, 3, 16, 16)
    eager = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), run=lambda m: m(x))
    assert_every_involution_matters(eager, lambda m: m(x), rtol=1e-5, atol=1e-5)
    compiled = torch.compile(eager, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    grads = []
    for model in (compiled, eager):
        model.train()
        eager.zero_grad()
        model(x).square().sum().backward()
        grads.append({name: p.grad.clone() for name, p in eager.named_parameters()})
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[0][name], g, rtol=1e-4, atol=1e-5, msg=name)
    assert_every_involution_matters(eager, lambda m: m(x), rtol=1e-4, atol=1e-5)  # the training-mode output


def tiny_rednet(x: torch.Tensor):
    """A narrow RedNet whose every involution moves ``x``'s features (tests/model_weights.py)."""
    return weights_matter(create_model("rednet26_small", num_classes=10, width=0.25),
                          run=lambda m: m.forward_features(x))


def test_forward_intermediates_follows_timms_contract():
    """timm >= 1.0: ``(final, maps)``; an int picks the last n stages, negative indices count from the end."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = tiny_rednet(x)
    assert_every_involution_matters(model, lambda m: m.forward_intermediates(x))  # compared exactly
    channels = model.stage_channels
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == list(channels)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [m.shape[1] for m in last_two] == list(channels[2:])
        for got, want in zip(last_two, maps[2:]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        _, ends = model.forward_intermediates(x, indices=(0, -1))
        assert [m.shape[1] for m in ends] == [channels[0], channels[3]]
        early, (only,) = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert early is only and only.shape[1] == channels[1]
    for bad in (0, 5, (4,), ()):
        with pytest.raises(ValueError):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers_keeps_what_the_maps_need(tmp_path):
    from involution.models import load_checkpoint, save_checkpoint

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    full = tiny_rednet(x)
    path = save_checkpoint(full, tmp_path / "full.safetensors")
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
    pruned = create_model("rednet26_small", num_classes=10, width=0.25).eval()
    assert pruned.prune_intermediate_layers((0, -3)) == [0, 1]
    assert not hasattr(pruned, "layer3") and not hasattr(pruned, "layer4") and pruned.num_classes == 0
    assert pruned.num_features == pruned.head_hidden_size == pruned.stage_channels[1]
    load_checkpoint(pruned, path)  # the dropped stages and head are no misfit
    with torch.no_grad():
        got = pruned.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        assert pruned(x).shape == (2, pruned.stage_channels[1])  # pooled features of the last kept stage
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    # every involution of the first two stages moves the maps compared (exactly)
    assert_every_involution_matters(pruned, lambda m: m.forward_intermediates(x, indices=(0, 1),
                                                                              intermediates_only=True))
    with pytest.raises(ValueError, match="dropped"):
        pruned.forward_intermediates(x, indices=(3,))
