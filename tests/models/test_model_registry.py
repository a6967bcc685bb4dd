"""Registry, architecture sizes and model cards."""

import pytest
import torch

from involution.models import RedNet, ResNet, create_model, is_model, list_models, register_model

REDNET_PARAMS = {
    "rednet26": 9_233_166,
    "rednet38": 12_386_986,
    "rednet50": 15_540_806,
    "rednet101": 25_652_950,
    "rednet152": 33_984_582,
}
RESNET_PARAMS = {
    "resnet26": 13_696_552,
    "resnet38": 19_626_792,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted({**REDNET_PARAMS, **RESNET_PARAMS}))
def test_exact_parameter_counts(name):
    with torch.device("meta"):  # shapes only: fast for the 150-layer models
        model = create_model(name)
    assert n_params(model) == {**REDNET_PARAMS, **RESNET_PARAMS}[name]


def test_resnet_baselines_match_torchvision_keys():
    import torchvision

    with torch.device("meta"):
        ours = create_model("resnet50")
        ref = torchvision.models.resnet50()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_list_models():
    names = list_models()
    for depth in (26, 38, 50, 101, 152):
        for family in ("rednet", "resnet"):
            assert f"{family}{depth}" in names
            assert f"{family}{depth}_small" in names
    assert names == sorted(names)
    assert list_models("rednet*") == [n for n in names if n.startswith("rednet")]
    assert list_models(["rednet26", "resnet26"]) == ["rednet26", "resnet26"]
    assert list_models(module="resnet") == [n for n in names if n.startswith("resnet")]
    assert is_model("rednet50") and not is_model("rednet51")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'rednet5'.*Did you mean.*'rednet50'"):
        create_model("rednet5")


def test_register_model_rejects_a_second_builder_of_the_same_name():
    def rednet26():  # the name of a registered model, on purpose
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register_model(rednet26)


def test_model_attributes_and_pretrained_cfg():
    with torch.device("meta"):
        red = create_model("rednet50", num_classes=10)
        res = create_model("resnet26")
        small = create_model("rednet26_small", in_chans=1)
    assert isinstance(red, RedNet) and isinstance(res, ResNet)
    cfg = red.pretrained_cfg
    assert cfg["architecture"] == "rednet50" and cfg["num_classes"] == 10
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["resize"] == 256
    assert cfg["interpolation"] == "bilinear"
    assert cfg["mean_255"] == (123.675, 116.28, 103.53) and cfg["std_255"] == (58.395, 57.12, 57.375)
    assert cfg["mean"] == pytest.approx([m / 255 for m in cfg["mean_255"]], abs=1e-4)
    assert cfg["std"] == pytest.approx([s / 255 for s in cfg["std_255"]], abs=1e-4)
    assert cfg["to_rgb"] is True
    assert cfg["first_conv"] == "stem.0.conv" and cfg["classifier"] == "fc"
    assert (cfg["paper_params_m"], cfg["paper_gflops"], cfg["paper_top1"]) == (15.54, 2.71, 78.35)
    assert red.get_submodule(cfg["first_conv"]).in_channels == 3
    assert red.get_submodule(cfg["classifier"]).out_features == 10
    assert res.pretrained_cfg["first_conv"] == "conv1"
    assert small.pretrained_cfg["input_size"] == (1, 32, 32) and len(small.pretrained_cfg["mean"]) == 1
    assert red.model_name == "rednet50" and red.model_kwargs["num_classes"] == 10
    assert "9,233,166" in create_model.__globals__["model_entrypoint"]("rednet26").__doc__


def test_model_structure_follows_the_official_layout():
    with torch.device("meta"):
        model = create_model("rednet50")
    stem_inv = model.stem[1]
    assert (stem_inv.channels, stem_inv.kernel_size, stem_inv.groups) == (32, (3, 3), 2)
    block = model.layer2[0]
    assert block.conv2.kernel_size == (7, 7) and block.conv2.stride == (2, 2) and block.conv2.groups == 8
    assert block.conv1.stride == (1, 1)  # style='pytorch': the stride sits on the involution
    assert block.downsample[0].stride == (2, 2) and len(block.downsample) == 2
    assert model.layer1[0].downsample is not None and model.layer1[1].downsample is None
    assert model.maxpool.kernel_size == 3 and model.maxpool.stride == 2
    with torch.device("meta"):
        det = create_model("rednet50", stem_kernel_size=7)
    assert det.stem[1].kernel_size == (7, 7)


def test_initialisation():
    torch.manual_seed(0)
    model = create_model("rednet26_small", width=0.5)
    for block in (*model.layer1, *model.layer4):
        assert torch.count_nonzero(block.bn3.weight) == 0  # residual BN zero-init
        assert torch.all(block.bn1.weight == 1)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert torch.all(model.fc.bias == 0)
    w = model.layer2[0].conv1.weight  # kaiming normal, fan_out, relu
    assert w.std().item() == pytest.approx((2 / w.shape[0]) ** 0.5, rel=0.2)
    off = create_model("rednet26_small", width=0.5, zero_init_residual=False)
    assert torch.all(off.layer1[0].bn3.weight == 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("rednet26_small", num_classes=-1)
    with pytest.raises(ValueError, match="out_indices"):
        create_model("rednet26_small", features_only=True, out_indices=(4,))
    with pytest.raises(ValueError, match="width"):
        create_model("resnet26_small", width=0)
    with pytest.raises(TypeError, match="layers"):
        create_model("rednet26", layers=(1, 1, 1, 1))
