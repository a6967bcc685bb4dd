"""Segmentation models (issue 6): parameter counts vs official, tiny forward/backward, mmseg key layout,
backbone initialisation from K=7 and K=3 RedNet files, whole-model checkpoints, clear errors."""

import json
import warnings

import pytest
import torch

from involution.layers import Involution2d
from involution.models import (
    create_model,
    list_models,
    load_checkpoint,
    load_model,
    ours_to_official,
    save_checkpoint,
)
from involution.models.backbone_init import load_backbone_checkpoint
from involution.models.segmentation import Segmentor
from involution.ops import use_backend
from model_weights import assert_every_involution_matters, randomise_weights, weights_matter

TINY_BACKBONE = {"width": 0.125}
TINY_FPN = {"backbone_kwargs": TINY_BACKBONE, "neck_channels": 16, "head_channels": 8}
TINY_UPER = {"backbone_kwargs": TINY_BACKBONE, "head_channels": 16, "aux_channels": 8}
SIZE = (33, 47)  # odd on purpose: every level's size is rounded up and the 2x upsamplings overshoot
# Every comparison of two computations of a segmentor here is exact (rtol=0, atol=0): each asserts that silencing
# any one involution layer moves the compared output by more than 10x float32's resolution at its scale
# (assert_every_involution_matters), the weights centred on the compared input (tests/model_weights.py).


def tiny(name: str, seed: int, x: torch.Tensor, **kwargs):
    """``name`` under weights_matter, centred on ``x``."""
    return weights_matter(create_model(name, **kwargs), seed, run=lambda m: m(x))


@pytest.fixture(autouse=True)
def torch_backend():
    """The PyTorch backend: tiny maps need no speed, and it never triggers a build of the C++ extension."""
    with use_backend("torch"):
        yield


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def images(n=2, seed=0):
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


# -- registry, counts ---------------------------------------------------------------------------------------------


def test_registered_with_cards_and_cfg():
    assert {"fpn_rednet50", "upernet_rednet50"} <= set(list_models())
    model = create_model("fpn_rednet50", **TINY_FPN)  # create_model's num_classes default: the model's own (19)
    assert isinstance(model, Segmentor) and model.num_classes == 19
    assert model.model_name == "fpn_rednet50"
    assert json.loads(json.dumps(model.model_kwargs)) == model.model_kwargs  # JSON-able
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["num_classes"] == 19 and cfg["classifier"] == "decode_head.conv_seg"
    assert cfg["paper_miou"] == {"convolution": 78.01, "involution": 79.13}
    uper = create_model("upernet_rednet50", num_classes=7, norm_layer=torch.nn.BatchNorm2d, **TINY_UPER)
    assert uper.num_classes == 7 and uper.aux_loss_weight == 0.4 and uper.model_kwargs["norm_layer"] == "bn"
    assert uper.backbone.stem[1].kernel_size == (7, 7)  # the official seg backbone's K=7 stem
    assert "K=7" in create_model.__globals__["model_entrypoint"]("upernet_rednet50").__doc__


@pytest.mark.parametrize(
    ("name", "kwargs", "official_m", "ours"),
    [
        ("fpn_rednet50", {}, 18.5, 18_463_169),
        ("fpn_rednet50", {"neck": "involution"}, 16.4, 16_372_737),
        ("upernet_rednet50", {}, 56.4, 56_380_500),  # with the auxiliary head, as mmseg counts
    ],
)
def test_parameter_counts_match_official(name, kwargs, official_m, ours):
    model = create_model(name, num_classes=19, **kwargs)
    count = n_params(model)
    assert count == ours
    assert abs(count / 1e6 - official_m) / official_m < 0.02


def test_upernet_counts_without_aux_and_with_involution():
    assert n_params(create_model("upernet_rednet50", aux_head=False)) == 54_015_809
    assert n_params(create_model("upernet_rednet50", neck="involution")) == 50_103_732  # no official count


# -- forward / backward -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "has_aux"),
    [
        ("fpn_rednet50", TINY_FPN, False),
        ("fpn_rednet50", {**TINY_FPN, "neck": "involution"}, False),
        ("upernet_rednet50", TINY_UPER, True),
        ("upernet_rednet50", {**TINY_UPER, "aux_head": False}, False),
        ("upernet_rednet50", {**TINY_UPER, "neck": "involution", "align_corners": True}, True),
    ],
)
def test_tiny_forward_backward(name, kwargs, has_aux):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs).train()
    out = model(images())
    assert set(out) == ({"out", "aux"} if has_aux else {"out"})
    for value in out.values():
        assert value.shape == (2, 5, *SIZE) and torch.isfinite(value).all()
    loss = out["out"].square().mean() + (0.4 * out["aux"].square().mean() if has_aux else 0)
    loss.backward()
    assert model.backbone.stem[0].conv.weight.grad.abs().sum() > 0
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0
    if has_aux:
        assert model.auxiliary_head.convs[0].conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        evaluated = model.eval()(images(1))
    assert set(evaluated) == {"out"} and evaluated["out"].shape == (1, 5, *SIZE)  # aux only in training


def test_involution_neck_has_involutions():
    conv = create_model("fpn_rednet50", **TINY_FPN)
    inv = create_model("fpn_rednet50", neck="involution", **TINY_FPN)
    assert not any(isinstance(m, Involution2d) for m in conv.neck.modules())
    layers = list(inv.neck.fpn_convs)
    assert len(layers) == 4 and all(isinstance(m, Involution2d) and m.kernel_size == (7, 7) for m in layers)
    assert layers[0].groups == 16 // 16


# -- mmseg key layout ---------------------------------------------------------------------------------------------

FPN_KEYS = [
    "backbone.stem.1.conv2.conv.weight",
    "neck.lateral_convs.0.conv.weight",
    "neck.lateral_convs.3.conv.bias",  # the official neck has no norm: its convs carry biases
    "neck.fpn_convs.3.conv.weight",
    "decode_head.scale_heads.0.0.conv.weight",
    "decode_head.scale_heads.1.0.bn.running_var",
    "decode_head.scale_heads.3.4.conv.weight",  # conv, up, conv, up, conv, up
    "decode_head.conv_seg.weight",
]
UPER_KEYS = [
    "decode_head.psp_modules.3.1.conv.weight",
    "decode_head.psp_modules.0.1.bn.weight",
    "decode_head.bottleneck.conv.weight",
    "decode_head.lateral_convs.2.bn.bias",
    "decode_head.fpn_convs.2.conv.weight",
    "decode_head.fpn_bottleneck.conv.weight",
    "decode_head.conv_seg.bias",
    "auxiliary_head.convs.0.conv.weight",
    "auxiliary_head.convs.0.bn.running_mean",
    "auxiliary_head.conv_seg.weight",
]


def test_module_names_are_mmsegs():
    fpn = create_model("fpn_rednet50", **TINY_FPN).state_dict()
    assert set(FPN_KEYS) <= set(fpn) and "neck.lateral_convs.0.bn.weight" not in fpn
    assert not any(k.startswith("decode_head.scale_heads.0.1") for k in fpn)  # stride 4: no upsampling
    inv = create_model("fpn_rednet50", neck="involution", **TINY_FPN).state_dict()
    assert {
        "neck.fpn_convs.0.conv1.conv.weight",
        "neck.fpn_convs.0.conv1.bn.weight",
        "neck.fpn_convs.0.conv2.conv.bias",
    } <= set(inv)  # the official involution's names
    uper = create_model("upernet_rednet50", **TINY_UPER).state_dict()
    assert set(UPER_KEYS) <= set(uper) and "decode_head.lateral_convs.3.conv.weight" not in uper
    assert {k.split(".", 1)[0] for k in uper} == {"backbone", "decode_head", "auxiliary_head"}


def _mmseg_file(model, path, **meta):
    torch.save({"meta": {"CLASSES": list(range(model.num_classes)), **meta}, "state_dict": model.state_dict()}, path)
    return path


def test_mmseg_checkpoint_loads_by_prefix(tmp_path):
    src = tiny("upernet_rednet50", 9, images(), num_classes=5, **TINY_UPER)
    path = _mmseg_file(src, tmp_path / "upernet.pth")
    torch.manual_seed(2)
    dst = create_model("upernet_rednet50", num_classes=5, checkpoint=path, **TINY_UPER).eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(images())["out"], src(images())["out"], rtol=0, atol=0)
    assert_every_involution_matters(src, lambda m: m(images())["out"])
    again = create_model("upernet_rednet50", num_classes=5, **TINY_UPER)
    report = load_checkpoint(again, path)  # the generic loader hands segmentors their own
    assert report.layout == "mmseg" and not report.head_reinitialised
    # the entry point's own checkpoint= (direct call) works too
    direct = create_model.__globals__["model_entrypoint"]("fpn_rednet50")
    fpn_src = randomise_weights(create_model("fpn_rednet50", neck="involution", **TINY_FPN), seed=2)
    fpn_path = _mmseg_file(fpn_src, tmp_path / "fpn.pth")
    fpn = direct(neck="involution", checkpoint=fpn_path, **TINY_FPN)
    for key, value in fpn_src.state_dict().items():
        assert torch.equal(fpn.state_dict()[key], value), key


def test_mmseg_checkpoint_other_classes_and_no_aux(tmp_path):
    src = tiny("upernet_rednet50", 9, images(1), num_classes=19, **TINY_UPER)
    path = _mmseg_file(src, tmp_path / "cityscapes.pth")
    with pytest.warns(UserWarning, match="conv_seg do not match"):
        model = create_model("upernet_rednet50", num_classes=4, checkpoint=path, **TINY_UPER)
    assert model.decode_head.conv_seg.weight.shape[0] == 4
    assert torch.equal(model.decode_head.fpn_bottleneck.conv.weight, src.decode_head.fpn_bottleneck.conv.weight)
    assert torch.equal(model.auxiliary_head.convs[0].conv.weight, src.auxiliary_head.convs[0].conv.weight)
    with pytest.warns(UserWarning, match="no auxiliary head"):
        no_aux = create_model("upernet_rednet50", aux_head=False, checkpoint=path, **TINY_UPER)
    assert torch.equal(no_aux.decode_head.conv_seg.weight, src.decode_head.conv_seg.weight)
    with torch.no_grad():  # the auxiliary head only trains: without it, the same predictions
        torch.testing.assert_close(no_aux.eval()(images(1))["out"], src(images(1))["out"], rtol=0, atol=0)
    assert_every_involution_matters(src, lambda m: m(images(1))["out"])


def test_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    fpn = create_model("fpn_rednet50", **TINY_FPN)
    state = fpn.state_dict()
    del state["neck.lateral_convs.1.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(RuntimeError, match=r"missing keys \(1\): neck.lateral_convs.1.conv.weight"):
        create_model("fpn_rednet50", checkpoint=path, **TINY_FPN)
    with pytest.raises(RuntimeError, match="unexpected keys"):  # a UPerNet file in an FPN
        create_model(
            "fpn_rednet50",
            checkpoint=_mmseg_file(create_model("upernet_rednet50", **TINY_UPER), tmp_path / "uper.pth"),
            **TINY_FPN,
        )
    classifier = tmp_path / "cls.pth"
    torch.save(create_model("rednet50", **TINY_BACKBONE).state_dict(), classifier)
    with pytest.raises(RuntimeError, match="use backbone_checkpoint="):
        create_model("fpn_rednet50", checkpoint=classifier, **TINY_FPN)


def test_own_safetensors_round_trip(tmp_path):
    model = tiny("fpn_rednet50", 8, images(1), neck="involution", num_classes=3, **TINY_FPN)
    path = save_checkpoint(model, tmp_path / "fpn.safetensors")
    rebuilt = load_model(path).eval()
    assert rebuilt.model_name == "fpn_rednet50" and rebuilt.model_kwargs == model.model_kwargs
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images(1))["out"], model(images(1))["out"], rtol=0, atol=0)
    # every involution layer, the backbone's and the neck's, moves the predictions compared (exactly)
    margins = assert_every_involution_matters(model, lambda m: m(images(1))["out"])
    assert {name.split(".")[0] for name in margins} == {"backbone", "neck"}
    report = load_checkpoint(create_model("fpn_rednet50", neck="involution", num_classes=3, **TINY_FPN), path)
    assert report.layout == "involution"
    uper = create_model("upernet_rednet50", num_classes=3, **TINY_UPER)
    uper_path = save_checkpoint(uper, tmp_path / "uper.safetensors")
    with pytest.warns(UserWarning, match="re-initialised"):  # both heads' conv_seg get the new class count
        other = load_model(uper_path, num_classes=6)
    assert other.auxiliary_head.conv_seg.out_channels == 6 and other.decode_head.conv_seg.out_channels == 6
    assert torch.equal(other.decode_head.bottleneck.conv.weight, uper.decode_head.bottleneck.conv.weight)


def test_in_chans_and_grad_checkpointing():
    model = create_model(
        "fpn_rednet50",
        in_chans=1,
        backbone_kwargs={**TINY_BACKBONE, "grad_checkpointing": True},
        neck_channels=16,
        head_channels=8,
    )
    weights_matter(model).train()
    assert model.pretrained_cfg["input_size"][0] == 1 and len(model.pretrained_cfg["mean"]) == 1
    assert model.backbone.grad_checkpointing
    x = torch.randn(2, 1, *SIZE, generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (True, False):  # the same values and gradients with and without recomputation
        model.backbone.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        inputs = x.clone().requires_grad_()
        torch.manual_seed(0)  # the heads' dropout
        out = model(inputs)["out"]
        assert out.shape == (2, 19, *SIZE)
        out.square().mean().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results.append({"out": out.detach(), "input": inputs.grad, **grads})
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")

    def forward(m):  # the training-mode output the gradients come from, the heads' dropout seeded
        torch.manual_seed(0)
        return m(x)["out"]

    assert_every_involution_matters(model, forward)


# -- backbone_checkpoint ------------------------------------------------------------------------------------------


def test_backbone_checkpoint_k7_plain(tmp_path):
    src = tiny("rednet50", 3, images(), stem_kernel_size=7, features_only=True, **TINY_BACKBONE)
    path = tmp_path / "k7.pth"
    torch.save(src.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model("fpn_rednet50", backbone_checkpoint=path, **TINY_FPN)
    assert model.backbone_load_report.reinitialised == []
    for key, value in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    with torch.no_grad():
        for got, want in zip(model.backbone.eval()(images()), src(images()), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_every_involution_matters(src, lambda m: m(images()))
    assert "backbone_checkpoint" not in model.model_kwargs  # a path is no constructor argument


@pytest.mark.parametrize("fmt", ["official", "safetensors"])
def test_backbone_checkpoint_k3_classifier(tmp_path, fmt):
    cls = randomise_weights(create_model("rednet50", num_classes=10, **TINY_BACKBONE), seed=4)  # ImageNet: K=3 stem, fc
    if fmt == "official":
        path = tmp_path / "rednet50_mmcls.pth"
        torch.save({"meta": {"epoch": 100}, "state_dict": ours_to_official(cls.state_dict())}, path)
    else:
        path = save_checkpoint(cls, tmp_path / "rednet50.safetensors")
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match=r"left freshly initialised: stem\.1\.conv2\.conv\.weight"):
        model = create_model("upernet_rednet50", backbone_checkpoint=path, **TINY_UPER)
    report = model.backbone_load_report
    assert report.reinitialised == ["stem.1.conv2.conv.weight", "stem.1.conv2.conv.bias"]
    assert report.layout == ("official" if fmt == "official" else "involution")
    own = model.backbone.state_dict()
    assert own["stem.1.conv2.conv.weight"].shape[0] == 49 and cls.state_dict()["stem.1.conv2.conv.weight"].shape[0] == 9
    for key, value in cls.state_dict().items():
        if key.startswith("fc.") or key in report.reinitialised:
            continue
        assert torch.equal(own[key], value), key


def test_backbone_checkpoint_errors(tmp_path):
    wrong = tmp_path / "rednet26.pth"
    torch.save(create_model("rednet26", **TINY_BACKBONE).state_dict(), wrong)
    with pytest.raises(RuntimeError, match=r"missing keys \(168\): layer1\.1\.conv1\.weight"):
        create_model("fpn_rednet50", backbone_checkpoint=wrong, **TINY_FPN)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("fpn_rednet50", backbone_checkpoint=tmp_path / "nowhere.pth", **TINY_FPN)
    # only the stem kernel generator may differ in shape: a wider network is an error
    wide = tmp_path / "wide.pth"
    torch.save(create_model("rednet50", width=0.25).state_dict(), wide)
    backbone = create_model("rednet50", stem_kernel_size=7, features_only=True, **TINY_BACKBONE)
    with pytest.raises(RuntimeError, match="mismatched shapes"):
        load_backbone_checkpoint(backbone, wide)


# -- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("fpn_rednet50", {"features_only": True}, ValueError, "no features_only form"),
        ("upernet_rednet50", {"features_only": True, "out_indices": (2, 3)}, ValueError, "features_only"),
        ("fpn_rednet50", {"neck": "attention"}, ValueError, r"neck must be one of \('convolution', 'involution'\)"),
        ("upernet_rednet50", {"neck": "conv"}, ValueError, "neck must be one of"),
        ("fpn_rednet50", {"aux_head": True}, ValueError, "no auxiliary head"),
        ("fpn_rednet50", {"num_classes": 0}, ValueError, "num_classes must be an int >= 1"),
        ("fpn_rednet50", {"backbone_kwargs": {"out_indices": (3,)}}, ValueError, r"may not set \['out_indices'\]"),
        ("upernet_rednet50", {"norm_layer": "layernorm"}, ValueError, "norm_layer must be one of"),
        ("upernet_rednet50", {"pool_scales": (0, 2)}, ValueError, "pool_scales"),
    ],
)
def test_clear_errors(name, kwargs, error, match):
    base = TINY_FPN if name == "fpn_rednet50" else TINY_UPER
    with pytest.raises(error, match=match):
        create_model(name, **{**base, **kwargs})


def test_bad_input_shape():
    model = create_model("fpn_rednet50", **TINY_FPN)
    with pytest.raises(ValueError, match=r"expects images \(N, C, H, W\)"):
        model(torch.randn(3, *SIZE))
