"""Detectors on RedNet-50-FPN: sizes vs the official model zoo, tiny train/eval passes, freezing, checkpoints, errors."""

import json
import re
import warnings

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from involution.layers import Involution2d
from involution.models import create_model, load_model, ours_to_official, save_checkpoint
from involution.models.detection import freeze_batchnorm
from involution.ops import use_backend
from model_weights import assert_every_involution_matters, disabled, randomise_weights, weights_matter

# Official params (M) of the d-li14/involution model zoo, num_classes=80.
OFFICIAL_PARAMS_M = {
    ("fasterrcnn", "convolution", "convolution"): 31.6,
    ("fasterrcnn", "involution", "convolution"): 29.5,
    ("fasterrcnn", "involution", "involution"): 29.0,
    ("maskrcnn", "convolution", "convolution"): 34.2,
    ("maskrcnn", "involution", "convolution"): 32.2,
    ("maskrcnn", "involution", "involution"): 29.5,
    ("retinanet", "convolution", "convolution"): 27.8,
    ("retinanet", "involution", "convolution"): 26.3,
}
TINY = {"backbone_kwargs": {"width": 0.125}, "fpn_channels": 32, "min_size": 64, "max_size": 64}
K = 3


@pytest.fixture(autouse=True)
def _torch_backend():
    """The PyTorch backend needs no compiled extension: these tests are about the models, not the op."""
    with use_backend("torch"):
        yield


def tiny(kind, **kwargs):
    return create_model(f"{kind}_rednet50_fpn", num_classes=K, **{**TINY, **kwargs})


def images_and_targets():
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    masks0 = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks0[0, 8:40, 6:30] = 1
    masks1 = torch.zeros(2, 48, 64, dtype=torch.uint8)
    masks1[0, 10:30, 10:30] = 1
    masks1[1, 0:20, 0:20] = 1
    targets = [
        {"boxes": torch.tensor([[6.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([2]), "masks": masks0},
        {
            "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 20.0, 20.0]]),
            "labels": torch.tensor([1, 3]),
            "masks": masks1,
        },
    ]
    return images, targets


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def outputs(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def assert_same_outputs(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


# Fixed regions (x1, y1, x2, y2) inside both test images: the R-CNN heads' raw outputs are read on these, so that
# they do not depend on which proposals survive the RPN's NMS.
ROIS = torch.tensor([[4.0, 6.0, 40.0, 44.0], [20.0, 10.0, 60.0, 46.0], [0.0, 0.0, 63.0, 47.0]])


def raw_outputs(model, images):
    """The detector's continuous outputs, before any threshold, NMS or top-k, by name: every FPN level, the RPN
    head's objectness and box deltas and the box (and mask) heads' outputs on ROIS (R-CNNs), or the RetinaNet head's
    class logits and box regression. A wrong value anywhere moves these, where the final detections can hide it
    (a box that drops out of the top 100) or change discontinuously (NMS)."""
    model.eval()
    with torch.no_grad():
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        levels = list(features.values())
        out = {f"fpn.{name}": f for name, f in features.items()}
        if hasattr(model, "head"):  # RetinaNet
            out.update({f"head.{name}": t for name, t in model.head(levels).items()})
            return out
        objectness, deltas = model.rpn.head(levels)
        out.update({f"rpn.objectness.{i}": t for i, t in enumerate(objectness)})
        out.update({f"rpn.deltas.{i}": t for i, t in enumerate(deltas)})
        heads, rois = model.roi_heads, [ROIS] * len(images)
        box_features = heads.box_head(heads.box_roi_pool(features, rois, batch.image_sizes))
        out["box.scores"], out["box.deltas"] = heads.box_predictor(box_features)
        if heads.has_mask():
            mask_features = heads.mask_head(heads.mask_roi_pool(features, rois, batch.image_sizes))
            out["mask.logits"] = heads.mask_predictor(mask_features)
    return out


def assert_same_raw_outputs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")


# -- sizes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "neck", "head"), sorted(OFFICIAL_PARAMS_M))
def test_parameter_counts_match_the_official_model_zoo(kind, neck, head):
    with torch.device("meta"):  # shapes only
        model = create_model(f"{kind}_rednet50_fpn", neck=neck, head=head)
    official = OFFICIAL_PARAMS_M[(kind, neck, head)] * 1e6
    assert abs(n_params(model) / official - 1) < 0.02
    assert model.num_classes == 80 and model.pretrained_cfg["paper_params_m"] == OFFICIAL_PARAMS_M[(kind, neck, head)]


# -- forward / backward ------------------------------------------------------------------------------------------

VARIANTS = [
    ("fasterrcnn", "convolution", "convolution"),
    ("fasterrcnn", "involution", "involution"),
    ("maskrcnn", "convolution", "convolution"),
    ("maskrcnn", "involution", "involution"),
    ("retinanet", "convolution", "convolution"),
    ("retinanet", "involution", "convolution"),
]
LOSSES = {
    "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "maskrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "retinanet": {"classification", "bbox_regression"},
}


@pytest.mark.parametrize(("kind", "neck", "head"), VARIANTS)
def test_tiny_train_step_and_eval_outputs(kind, neck, head):
    torch.manual_seed(0)
    extra = {"score_thresh": 0.0} if kind == "retinanet" else {"box_score_thresh": 0.0}
    model = tiny(kind, neck=neck, head=head, **extra)
    images, targets = images_and_targets()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES[kind]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    heads = [p for name, p in model.named_parameters() if not name.startswith("backbone.body.")]
    assert sum(bool(p.grad.abs().sum() > 0) for p in heads) >= 0.9 * len(heads)

    out = outputs(model, images)
    assert len(out) == 2
    for o, img in zip(out, images):
        n = o["boxes"].shape[0]
        assert n > 0 and o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].dtype == torch.int64
        assert 1 <= o["labels"].min() and o["labels"].max() <= K
        assert (o["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (o["boxes"][:, 3] <= img.shape[1] + 1e-3).all()
        if kind == "maskrcnn":
            assert o["masks"].shape == (n, 1, *img.shape[1:])


def test_retinanet_never_outputs_the_background_label():
    model = randomise_weights(tiny("retinanet", score_thresh=0.0, detections_per_img=1000))
    with torch.no_grad():  # make channel 0 the most confident class everywhere
        cls = model.head.classification_head.cls_logits
        cls.bias.view(-1, K + 1)[:, 0] = 20.0
    out = outputs(model, [torch.rand(3, 64, 64)])[0]
    assert out["labels"].numel() > 0 and out["labels"].min() >= 1


# -- freezing ----------------------------------------------------------------------------------------------------


def test_official_freezing_stem_and_layer1_frozen_every_backbone_bn_frozen():
    model = tiny("fasterrcnn")
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert isinstance(body.stem[1].conv1.bn, FrozenBatchNorm2d)  # inside the stem involution's kernel generator
    assert isinstance(body.layer3[0].conv2.conv1.bn, FrozenBatchNorm2d)  # inside a block's kernel generator
    assert len(frozen) > 50
    for name, p in body.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "layer1."))), name
    model.train()
    images, targets = images_and_targets()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is None for p in body.stem.parameters()) and all(p.grad is None for p in body.layer1.parameters())
    assert body.layer2[0].conv1.weight.grad is not None


def test_frozen_batchnorm_keeps_the_statistics():
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    holder = nn.Sequential(bn).eval()
    x = torch.randn(2, 8, 5, 5)
    ref = holder(x)
    assert freeze_batchnorm(holder) == 1 and isinstance(holder[0], FrozenBatchNorm2d)
    torch.testing.assert_close(holder(x), ref)


def test_norm_eval_false_and_no_frozen_stages_train_everything():
    model = tiny("maskrcnn", frozen_stages=-1, norm_eval=False)
    body = model.backbone.body
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    before = body.stem[0].bn.running_mean.clone()
    images, targets = images_and_targets()
    sum(model(images, targets).values()).backward()
    assert all(p.grad is not None for p in body.parameters())
    # zero-initialised residual BNs: at step 0 the branches learn through their last BN's weight
    assert (
        all(bool(b.bn3.weight.grad.abs().sum() > 0) for b in body.layer1)
        and body.stem[0].conv.weight.grad.abs().sum() > 0
    )
    assert not torch.equal(body.stem[0].bn.running_mean, before)  # ordinary BN, updated in train mode


def test_frozen_stages_stay_in_eval_mode_with_trainable_bn():
    model = tiny("fasterrcnn", frozen_stages=2, norm_eval=False).train()
    body = model.backbone.body
    assert not body.stem.training and not body.layer1.training and not body.layer2.training
    assert body.layer3.training and model.backbone.fpn.training
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


# -- involution neck and heads -------------------------------------------------------------------------------------


def test_involution_neck_and_heads_where_stated():
    conv = tiny("maskrcnn")
    assert not any(
        isinstance(m, Involution2d) for name, m in conv.named_modules() if not name.startswith("backbone.body")
    )
    inv = tiny("maskrcnn", neck="involution", head="involution")
    assert all(isinstance(b, Involution2d) and b.kernel_size == (7, 7) for b in inv.backbone.fpn.layer_blocks)
    assert len(inv.backbone.fpn.layer_blocks) == 4
    assert isinstance(inv.rpn.head.conv[0][0], Involution2d) and isinstance(inv.rpn.head.conv[0][1], nn.ReLU)
    assert len(inv.roi_heads.mask_head) == 4
    assert all(isinstance(b[0], Involution2d) and isinstance(b[1], nn.ReLU) for b in inv.roi_heads.mask_head)
    neck_only = tiny("fasterrcnn", neck="involution")
    assert isinstance(neck_only.backbone.fpn.layer_blocks[0], Involution2d)
    assert not any(isinstance(m, Involution2d) for m in neck_only.rpn.modules())
    retina = tiny("retinanet", neck="involution")
    fpn = retina.backbone.fpn
    assert len(fpn.layer_blocks) == 3 and all(isinstance(b, Involution2d) for b in fpn.layer_blocks)
    assert isinstance(fpn.extra_blocks.p6, nn.Conv2d) and fpn.extra_blocks.p6.in_channels == 256  # C5 at width 1/8
    assert not any(isinstance(m, Involution2d) for m in retina.head.modules())


# -- backbone checkpoints ------------------------------------------------------------------------------------------


def body_equals(body, reference, skip=()):
    ref = reference.state_dict()
    for key, value in body.state_dict().items():
        if key in skip:
            continue
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=key)


def test_backbone_checkpoint_k7_loads_everything(tmp_path):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    source = weights_matter(create_model("rednet50", stem_kernel_size=7, width=0.125), seed=1, run=lambda m: m(x))
    path = tmp_path / "rednet50_k7.pth"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tiny("fasterrcnn", backbone_checkpoint=str(path))
    body_equals(model.backbone.body, source)
    # the same maps as the classifier's stages, through the detector's FrozenBatchNorm2d layers
    body = model.backbone.body.eval()
    stages = lambda m: m.forward_intermediates(x, body.out_indices, intermediates_only=True)
    with torch.no_grad():
        torch.testing.assert_close(body(x), stages(source))
    assert_every_involution_matters(source, stages, rtol=1.3e-6, atol=1e-5)  # assert_close's float32 tolerance
    assert "backbone_checkpoint" not in model.model_kwargs  # weights travel in the model's own files
    safetensors = save_checkpoint(source, tmp_path / "rednet50_k7.safetensors")
    again = tiny("retinanet", backbone_checkpoint=str(safetensors))
    body_equals(again.backbone.body, source)


def test_backbone_checkpoint_from_imagenet_k3_stem_warns_and_keeps_the_rest(tmp_path):
    source = randomise_weights(create_model("rednet50", width=0.125), seed=2)  # the ImageNet classifier: K=3 stem
    path = tmp_path / "rednet50_imagenet.pth"
    torch.save({"meta": {"epoch": 100}, "state_dict": ours_to_official(source.state_dict())}, path)  # mmcls layout
    fresh = tiny("fasterrcnn").backbone.body.stem[1].conv2.conv.weight.shape
    with pytest.warns(UserWarning, match=r"stem\.1\.conv2\.conv\.weight.*stem\.1\.conv2\.conv\.bias"):
        model = tiny("maskrcnn", backbone_checkpoint=str(path))
    body = model.backbone.body
    assert body.stem[1].conv2.conv.weight.shape == fresh  # K=7: 2 groups x 49
    body_equals(body, source, skip=("stem.1.conv2.conv.weight", "stem.1.conv2.conv.bias"))


def test_backbone_checkpoint_of_another_architecture_is_an_error(tmp_path):
    path = tmp_path / "rednet26.pth"
    torch.save(create_model("rednet26", width=0.125, stem_kernel_size=7).state_dict(), path)
    with pytest.raises(RuntimeError, match=r"missing keys.*layer"):
        tiny("fasterrcnn", backbone_checkpoint=str(path))
    with pytest.raises(FileNotFoundError):
        tiny("fasterrcnn", backbone_checkpoint=str(tmp_path / "nope.pth"))


# -- whole-detector checkpoints ------------------------------------------------------------------------------------

_OURS_TO_MMDET = [
    (r"backbone\.body\.", "backbone."),
    (r"backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
    (r"backbone\.fpn\.layer_blocks\.(\d+)\.", r"neck.fpn_convs.\1."),
    (r"backbone\.fpn\.extra_blocks\.p6\.", "neck.fpn_convs.3.conv."),
    (r"backbone\.fpn\.extra_blocks\.p7\.", "neck.fpn_convs.4.conv."),
    (r"rpn\.head\.conv\.0\.0\.", "rpn_head.rpn_conv."),
    (r"rpn\.head\.cls_logits\.", "rpn_head.rpn_cls."),
    (r"rpn\.head\.bbox_pred\.", "rpn_head.rpn_reg."),
    (r"roi_heads\.box_head\.fc6\.", "roi_head.bbox_head.shared_fcs.0."),
    (r"roi_heads\.box_head\.fc7\.", "roi_head.bbox_head.shared_fcs.1."),
    (r"roi_heads\.box_predictor\.cls_score\.", "roi_head.bbox_head.fc_cls."),
    (r"roi_heads\.box_predictor\.bbox_pred\.", "roi_head.bbox_head.fc_reg."),
    (r"roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$", r"roi_head.mask_head.convs.\1.conv.\2"),
    (r"roi_heads\.mask_head\.(\d+)\.0\.", r"roi_head.mask_head.convs.\1.0."),
    (r"roi_heads\.mask_predictor\.conv5_mask\.", "roi_head.mask_head.upsample."),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_head.mask_head.conv_logits."),
    (r"head\.classification_head\.conv\.(\d+)\.0\.", r"bbox_head.cls_convs.\1.conv."),
    (r"head\.regression_head\.conv\.(\d+)\.0\.", r"bbox_head.reg_convs.\1.conv."),
    (r"head\.classification_head\.cls_logits\.", "bbox_head.retina_cls."),
    (r"head\.regression_head\.bbox_reg\.", "bbox_head.retina_reg."),
]


def to_mmdet(state_dict, num_anchors=9):
    """Our detector state dict written as an official mmdet file would hold it (background last / absent)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OURS_TO_MMDET:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key, count=1)
                break
        else:
            raise AssertionError(f"no mmdet name for {key}")
        if ".fc_cls." in new:
            value = torch.cat([value[1:], value[:1]])
        elif ".fc_reg." in new:
            value = value[4:]
        elif ".conv_logits." in new:
            value = value[1:]
        elif ".retina_cls." in new:
            value = value.unflatten(0, (num_anchors, -1))[:, 1:].flatten(0, 1)
        out[new] = value.clone()
    return out


def without_background(raw):
    """raw_outputs less what the background rows that an mmdet file does not hold compute (the box regression's
    first 4 columns, the mask logits' first channel, RetinaNet's background logit): those rows keep the model's
    fresh values, which torchvision never uses. mmdet's fc_cls does have a background row: box.scores stay whole."""
    out = dict(raw)
    for key, n in (("box.deltas", 4), ("mask.logits", 1)):
        if key in out:
            out[key] = out[key][:, n:]
    if "head.cls_logits" in out:
        out["head.cls_logits"] = out["head.cls_logits"][..., 1:]
    return out


MMDET_CASES = [
    ("fasterrcnn", "convolution", "convolution"),
    ("fasterrcnn", "involution", "involution"),
    ("maskrcnn", "convolution", "convolution"),
    ("maskrcnn", "involution", "involution"),
    ("retinanet", "involution", "convolution"),
]


@pytest.mark.parametrize(("kind", "neck", "head"), MMDET_CASES)
def test_mmdet_layout_checkpoint_gives_the_same_detector(tmp_path, kind, neck, head):
    extra = {"score_thresh": 0.0} if kind == "retinanet" else {"box_score_thresh": 0.0}
    images, _ = images_and_targets()
    source = weights_matter(tiny(kind, neck=neck, head=head, **extra), seed=3, run=lambda m: raw_outputs(m, images))
    sd = to_mmdet(source.state_dict())
    assert any(k.startswith("neck.fpn_convs.0.") for k in sd)
    if kind != "retinanet":
        assert (
            sd["roi_head.bbox_head.fc_cls.weight"].shape[0] == K + 1
            and sd["roi_head.bbox_head.fc_reg.weight"].shape[0] == 4 * K
        )
    path = tmp_path / f"{kind}_mmdet.pth"
    torch.save({"meta": {"CLASSES": ["a", "b", "c"]}, "state_dict": sd}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor corresponds: nothing skipped
        loaded = tiny(kind, neck=neck, head=head, checkpoint=str(path), **extra)
    ref = outputs(source, images)
    assert sum(o["boxes"].shape[0] for o in ref) > 0
    assert_same_outputs(outputs(loaded, images), ref)
    assert_same_raw_outputs(*(without_background(raw_outputs(m, images)) for m in (loaded, source)))
    assert_every_involution_matters(source, lambda m: without_background(raw_outputs(m, images)))  # exact


def test_mmdet_checkpoint_of_another_neck_loads_the_backbone_and_warns(tmp_path):
    source = randomise_weights(tiny("fasterrcnn", neck="involution"), seed=4)
    path = tmp_path / "inv_neck.pth"
    torch.save({"state_dict": to_mmdet(source.state_dict())}, path)
    with pytest.warns(
        UserWarning, match=r"skipped .*neck\.fpn_convs\.0\.conv1.*freshly initialised.*layer_blocks\.0\.0"
    ):
        model = tiny("fasterrcnn", checkpoint=str(path))
    body_equals(model.backbone.body, source.backbone.body)
    torch.testing.assert_close(model.roi_heads.box_head.fc6.weight, source.roi_heads.box_head.fc6.weight)
    broken = {k: v for k, v in to_mmdet(source.state_dict()).items() if not k.startswith("backbone.layer4.0.")}
    torch.save({"state_dict": broken}, path)
    with pytest.raises(RuntimeError, match=r"missing keys .*backbone\.body\.layer4\.0\."):
        tiny("fasterrcnn", neck="involution", checkpoint=str(path))


def test_own_state_dicts_round_trip(tmp_path):
    images, _ = images_and_targets()
    source = weights_matter(tiny("maskrcnn", neck="involution", box_score_thresh=0.0), seed=5,
                            run=lambda m: raw_outputs(m, images))
    ref, ref_raw = outputs(source, images), raw_outputs(source, images)
    path = tmp_path / "own.pth"
    torch.save(source.state_dict(), path)
    loaded = tiny("maskrcnn", neck="involution", box_score_thresh=0.0, checkpoint=str(path))
    assert_same_outputs(outputs(loaded, images), ref)
    assert_same_raw_outputs(raw_outputs(loaded, images), ref_raw)
    # this library's format: model_kwargs are JSON and rebuild the same detector
    json.dumps(source.model_kwargs)
    assert source.model_kwargs["num_classes"] == K and source.model_kwargs["neck"] == "involution"
    saved = save_checkpoint(source, tmp_path / "own.safetensors")
    rebuilt = load_model(saved)
    assert rebuilt.model_name == "maskrcnn_rednet50_fpn"
    assert_same_outputs(outputs(rebuilt, images), ref)
    assert_same_raw_outputs(raw_outputs(rebuilt, images), ref_raw)
    assert_every_involution_matters(source, lambda m: raw_outputs(m, images))  # compared exactly
    # another class count: the class-dependent layers are skipped with a warning, the rest loads
    with pytest.warns(UserWarning, match=r"cls_score"):
        other = create_model("maskrcnn_rednet50_fpn", num_classes=5, neck="involution", checkpoint=str(saved), **TINY)
    torch.testing.assert_close(other.roi_heads.box_head.fc7.weight, source.roi_heads.box_head.fc7.weight)


def test_compared_outputs_depend_on_every_involution_layer():
    """The comparisons above cannot pass with a wrong involution path: in the detector with involutions everywhere
    (body, neck, RPN head, mask head), with the weights of the mmdet round trip, every involution layer moves
    raw_outputs (each output relative to its own scale) beyond the exact comparisons' float32 resolution, and one
    of the body and one of the neck move the final detections too."""
    images, _ = images_and_targets()
    model = weights_matter(tiny("maskrcnn", neck="involution", head="involution", box_score_thresh=0.0), seed=3,
                           run=lambda m: raw_outputs(m, images))
    scale = {name: t.abs().max() for name, t in raw_outputs(model, images).items()}
    margins = assert_every_involution_matters(
        model, lambda m: [t / scale[k] for k, t in raw_outputs(m, images).items()])
    parts = ("backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.mask_head.")
    assert all(any(name.startswith(part) for name in margins) for part in parts), sorted(margins)
    final = outputs(model, images)
    for name in ("backbone.body.layer1.0.conv2", "backbone.fpn.layer_blocks.0"):
        with disabled(model.get_submodule(name)), pytest.raises(AssertionError):
            assert_same_outputs(outputs(model, images), final)


# -- arguments -----------------------------------------------------------------------------------------------------


def test_create_model_defaults_to_coco_classes():
    with torch.device("meta"):
        model = create_model("fasterrcnn_rednet50_fpn")
    assert model.num_classes == 80 and model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    assert model.transform.image_mean == [0.485, 0.456, 0.406]


def test_detector_kwargs_pass_through():
    model = tiny("fasterrcnn", box_detections_per_img=7)
    assert model.roi_heads.detections_per_img == 7 and model.model_kwargs["box_detections_per_img"] == 7
    assert tiny("retinanet").detections_per_img == 100  # official max_per_img


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"neck": "conv"}, ValueError, r"neck must be one of 'convolution', 'involution'"),
        ({"head": "attention"}, ValueError, r"head must be one of 'convolution', 'involution'"),
        ({"features_only": True}, ValueError, r"no features_only"),
        ({"num_classes": 0}, ValueError, r"num_classes must be an int >= 1"),
        ({"frozen_stages": 5}, ValueError, r"frozen_stages must be an int in -1\.\.4"),
        ({"backbone_kwargs": {"out_indices": (1,)}}, ValueError, r"backbone_kwargs may not set \['out_indices'\]"),
        ({"fpn_channels": 8}, ValueError, r"fpn_channels"),
    ],
)
def test_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model("fasterrcnn_rednet50_fpn", **{**TINY, **kwargs})


def test_retinanet_has_no_involution_head():
    with pytest.raises(ValueError, match=r"head must be one of 'convolution' \(RetinaNet has no official involution"):
        tiny("retinanet", head="involution")


def test_in_chans_goes_to_the_backbone():
    model = tiny("fasterrcnn", in_chans=1)
    assert model.backbone.body.stem[0].conv.in_channels == 1 and len(model.transform.image_mean) == 1
    images, targets = images_and_targets()
    model.train()
    losses = model([im[:1] for im in images], targets)
    assert torch.isfinite(sum(losses.values()))
