"""Parameter and multiply-add counts: the involution formulas, hand-computed layers, the model zoo, summary()."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from involution import Involution2d
from involution.models import (
    FlopReport,
    count_flops,
    count_params,
    create_model,
    mmcv_style_macs,
    summary,
)
from involution.models.flops import FLOP_FORMULAS, register_flop_formulas
from involution.ops import involution2d

INV = "involution.involution2d"


def _layer_macs_by_hand(c: int, h: int, w: int, k: int, stride: int, r: int, gc: int, out: int | None = None):
    """(generator MACs, aggregation MACs, projection MACs) of Involution2d(c, k, stride) on a (1, c, h, w) input."""
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    g, hidden = max(1, c // gc), max(1, c // r)
    generator = c * hidden * ho * wo + hidden * g * k * k * ho * wo  # two 1x1 convs on the (pooled) input
    aggregation = c * k * k * ho * wo
    projection = c * out * ho * wo if out and out != c else 0
    return generator, aggregation, projection


@pytest.mark.parametrize(
    "c, hw, k, stride, out",
    [(32, (8, 8), 7, 1, None), (64, (9, 7), 3, 2, None), (16, (6, 6), 5, 1, 48)],
)
def test_single_layer_matches_hand_count(c, hw, k, stride, out):
    layer = Involution2d(c, kernel_size=k, stride=stride, out_channels=out)
    report = count_flops(layer, (1, c, *hw))
    gen, agg, proj = _layer_macs_by_hand(c, *hw, k, stride, r=4, gc=16, out=out)
    assert report.by_op[INV] == agg == report.involution_macs
    assert report.by_op["aten.convolution"] == gen + proj
    assert report.macs == gen + agg + proj
    assert report.flops == 2 * report.macs  # FlopCounterMode's convention: a multiply-add is 2 FLOPs
    assert report.params == count_params(layer) == sum(p.numel() for p in layer.parameters())
    assert report.device == "meta"
    # the per-module view: the generator's convs under conv1/conv2, the aggregation at the top
    assert report.by_module[""] == report.macs
    assert report.by_module["conv1.conv"] == c * max(1, c // 4) * math.ceil(hw[0] / stride) * math.ceil(hw[1] / stride)


def test_batch_scales_and_real_run_agrees():
    layer = Involution2d(16, kernel_size=3, stride=2).eval()
    meta = count_flops(layer, (2, 16, 7, 7))
    real = count_flops(layer, (2, 16, 7, 7), device=None)
    assert real.device == "cpu" and real.macs == meta.macs and real.by_op == meta.by_op
    assert count_flops(layer, (1, 16, 7, 7)).macs * 2 == meta.macs
    assert all(p.device.type == "cpu" for p in layer.parameters())  # the meta run left the module alone
    assert layer.training is False


def test_backward_real_and_meta_agree_and_leave_grads_alone():
    model = nn.Sequential(nn.Conv2d(4, 16, 1), Involution2d(16, kernel_size=3))
    meta = count_flops(model, (1, 4, 6, 6), backward=True)
    real = count_flops(model, (1, 4, 6, 6), backward=True, device=None)
    assert real.backward_by_op == meta.backward_by_op and real.backward_macs == meta.backward_macs > 0
    assert meta.backward_by_op["involution.involution2d_backward_input"] == 16 * 9 * 36
    assert all(p.grad is None for p in model.parameters())


def test_formulas_forward_and_backward_ops():
    """The three op formulas each give N*C*Kh*Kw*Ho*Wo multiply-adds (2 FLOPs each)."""
    n, c, g, k, h = 2, 8, 2, 3, 5
    x = torch.randn(n, c, h, h, requires_grad=True)
    w = torch.randn(n, g, k, k, h, h, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        involution2d(x, w, padding=1).sum().backward()
    counts = {str(op): v for op, v in counter.get_flop_counts()["Global"].items()}
    expected = 2 * n * c * k * k * h * h
    assert counts == {
        INV: expected,
        "involution.involution2d_backward_input": expected,
        "involution.involution2d_backward_weight": expected,
    }


def test_register_flop_formulas_for_plain_counter():
    register_flop_formulas()
    register_flop_formulas()  # idempotent
    x, w = torch.randn(1, 4, 3, 3), torch.randn(1, 1, 3, 3, 3, 3)
    with FlopCounterMode(display=False) as counter:
        involution2d(x, w, padding=1)
    assert counter.get_total_flops() == 2 * 4 * 9 * 9


def test_plain_conv_follows_torch_convention():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    report = count_flops(conv, (1, 8, 10, 10))
    assert report.macs == 8 * 16 * 9 * 5 * 5  # bias and padding taps are not special-cased
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_flops(dw, (1, 8, 10, 10)).macs == 8 * 9 * 10 * 10


def test_backward_counts_small_model():
    model = create_model("rednet26_small", width=0.25, num_classes=10)
    report = count_flops(model, (2, 3, 16, 16), backward=True)
    assert report.backward_macs > report.macs  # grads of inputs and weights: about twice the forward
    assert report.training_macs == report.macs + report.backward_macs
    # every involution's input requires grad (even the stem's: it follows a convolution)
    assert report.backward_by_op["involution.involution2d_backward_input"] == report.involution_macs
    assert report.backward_by_op["involution.involution2d_backward_weight"] == report.involution_macs
    assert all(p.grad is None for p in model.parameters())  # the meta run did not touch the real model


def test_rednet50_in_expected_range():
    report = count_flops("rednet50")
    assert isinstance(report, FlopReport) and report.input_size == (1, 3, 224, 224)
    assert report.params == 15_540_806  # the official 15.54 M
    assert 2.60e9 < report.macs < 2.75e9  # the paper: 2.71 G multiply-adds (counted by other rules)
    # the aggregations, independently: the stem's K=3 involution at 112x112, then K=7 per block of each stage
    stem = 32 * 3 * 3 * 112 * 112
    blocks = sum(d * m * 7 * 7 * s * s for d, m, s in zip((3, 4, 6, 3), (64, 128, 256, 512), (56, 28, 14, 7)))
    assert report.involution_macs == stem + blocks == 71_224_832
    # the convolutions, independently: mmcv's per-module rule (hooks) against FlopCounterMode's aten count
    mmcv = mmcv_style_macs("rednet50")
    assert report.by_op["aten.convolution"] == mmcv["conv"]
    assert report.by_op["aten.addmm"] == mmcv["linear"] == 2048 * 1000
    assert mmcv["involution"] == report.involution_macs
    assert round((mmcv["total"] + mmcv["involution"]) / 1e9, 2) == 2.69  # vs the published 2.71


def test_published_rednet50_numbers_reconstructed():
    """docs/models.md: mmcls get_flops (no classifier) under mmcv's rules + the aggregation, with a 7x7 stem."""
    mmcv = mmcv_style_macs("rednet50", stem_kernel_size=7)
    assert round((mmcv["total"] - mmcv["linear"] + mmcv["involution"]) / 1e9, 2) == 2.71
    with torch.device("meta"):  # parameter counts need no forward pass
        params = {
            (d, k): count_params(create_model(f"rednet{d}", stem_kernel_size=k)) for d in (50, 152) for k in (3, 7)
        }
    assert round(params[50, 7] / 1e6, 2) == 15.54
    assert round(params[152, 7] / 1e6, 2) == 33.99 != round(params[152, 3] / 1e6, 2)  # the README's figure


def test_resnet50_matches_published_numbers():
    report = count_flops("resnet50")
    assert report.params == 25_557_032
    assert report.macs == 4_089_184_256  # torchvision publishes 4.09 GFLOPs (multiply-adds)
    assert INV not in report.by_op
    assert round(mmcv_style_macs("resnet50")["total"] / 1e9, 1) == 4.1  # the paper's 4.1 (mmcv: 4.12)


def test_input_size_forms_and_features_only():
    small = create_model("rednet26_small", width=0.25)
    assert count_flops(small, None).input_size == (1, 3, 32, 32)  # from pretrained_cfg
    assert count_flops(small, 16).input_size == (1, 3, 16, 16)
    assert count_flops(small, (3, 16, 16)).macs == count_flops(small, (1, 3, 16, 16)).macs
    assert count_flops(small, (16, 16)).input_size == (1, 3, 16, 16)  # H W: with the model's channels
    with pytest.raises(ValueError, match="input_size"):
        count_flops(small, (1, 3, 16, 16, 1))
    with pytest.raises(ValueError, match=r"rednet26_small takes 3 input channel\(s\), not 1"):
        count_flops(small, (1, 16, 16))  # refused before the first convolution's "Invalid channel dimensions"
    feats = count_flops("rednet26_small", (1, 3, 16, 16), features_only=True, width=0.25)
    assert feats.macs > 0 and "aten.addmm" not in feats.by_op
    with pytest.raises(TypeError, match="model name"):
        count_flops(small, 16, width=0.5)


def test_count_params_trainable_only():
    layer = Involution2d(16, kernel_size=3)
    total = count_params(layer)
    layer.conv1.requires_grad_(False)
    frozen = sum(p.numel() for p in layer.conv1.parameters())
    assert count_params(layer, trainable_only=True) == total - frozen
    assert count_params(layer) == total


def test_summary_table():
    text = summary("rednet26")
    lines = text.splitlines()
    assert lines[0] == "rednet26, input (1, 3, 224, 224)"
    for name in ("stem", "maxpool", "layer1", "layer4", "fc", "total"):
        assert any(line.split()[0] == name for line in lines[1:]), name
    assert "9,233,166" in text  # the total parameter count
    assert "multiply-add" in text and "published: 9.23 M params, 1.73 GFLOPs" in text
    deep = summary(create_model("resnet26_small", width=0.25), depth=2)
    assert "input (1, 3, 32, 32)" in deep and "layer1.0" in deep and "Bottleneck" in deep
    with pytest.raises(ValueError, match="depth"):
        summary("rednet26", depth=0)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_clip_models_are_measured_at_their_clip_size_and_count_the_3d_op(in_chans):
    """A clip model's summary runs at its cfg's (C, T, H, W), which follows the channels it was built with, and its
    Involution3d aggregation is counted (N * C * T * H * W * 27 per layer at stride 1), not left out."""
    model = create_model("video_rednet_tiny", in_chans=in_chans)
    assert model.pretrained_cfg["input_size"] == (in_chans, 8, 32, 32)
    assert len(model.pretrained_cfg["mean"]) == in_chans
    text = summary(model)
    assert f"input {(1, in_chans, 8, 32, 32)}" in text and "involution.involution3d" in text
    report = count_flops(model, input_size=None)  # None: the model's cfg input size
    assert report.involution_macs > 0 and report.by_op["involution.involution3d"] == report.involution_macs
    with pytest.raises(ValueError, match=f"takes {in_chans} input channel"):
        summary(model, input_size=(in_chans + 1, 8, 32, 32))
