"""The RedNets through timm (models/timm_registry.py): registry, pretrained_cfg, weights, features, optimizer,
data config, training; checked with timm's own helpers. timm is optional: without it these tests skip (under CI
they fail), and ``import involution`` must work (the subprocess test at the end)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from backend_requirements import require_or_skip
from torch import nn

timm = require_or_skip("timm")
from model_weights import assert_every_involution_matters, weights_matter  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402
from timm.models import get_pretrained_cfg  # noqa: E402
from timm.models._features import FeatureGetterNet, FeatureListNet  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

from involution.models import create_model, load_model, ours_to_official, save_checkpoint  # noqa: E402
from involution.models.rednet import _rednet_cfg  # noqa: E402

DEPTHS = (26, 38, 50, 101, 152)
NAMES = [f"rednet{d}{s}" for d in DEPTHS for s in ("", "_small")]
TINY = {"num_classes": 10, "width": 0.25}  # rednet26_small at a quarter width: fast, every involution matters


def batch(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def pair(name: str, seed: int = 0, x: torch.Tensor | None = None, **kwargs) -> tuple[nn.Module, nn.Module]:
    """``name`` from timm and from involution.create_model, in eval mode with the same weights: every involution
    matters on ``x`` (default :func:`batch`; tests/model_weights.py)."""
    x = batch() if x is None else x
    ours = weights_matter(create_model(name, **kwargs), seed, run=lambda m: m(x))
    theirs = timm.create_model(name, **kwargs).eval()
    theirs.load_state_dict(ours.state_dict())
    return theirs, ours


def tiny_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The same randomised rednet26_small from timm and from involution.create_model."""
    return pair("rednet26_small", seed, **TINY)


def assert_exact_comparisons_see_every_involution(model: nn.Module, run=lambda m: m(batch())) -> None:
    """Silencing any involution of ``model`` changes ``run(model)``: the exact comparisons here would see it."""
    assert_every_involution_matters(model, run)


# -- registry and pretrained_cfg ----------------------------------------------------------------------------------


def test_the_ten_names_are_in_timms_registry():
    assert sorted(timm.list_models("rednet*")) == sorted(NAMES)
    assert not timm.list_models("rednet*", pretrained=True)  # nothing to download


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_is_ours(name):
    depth, small = int(name.removeprefix("rednet").removesuffix("_small")), name.endswith("_small")
    ours, cfg = _rednet_cfg(depth, small), get_pretrained_cfg(name)
    for key in ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "num_classes", "pool_size",
                "paper_ids", "origin_url", "paper_name"):
        assert getattr(cfg, key) == ours[key], key
    assert (cfg.first_conv, cfg.classifier, cfg.architecture) == ("stem.0.conv", "fc", name)
    assert max(cfg.mean) < 1 and cfg.input_size == ((3, 32, 32) if small else (3, 224, 224))
    assert not cfg.has_weights and not cfg.custom_load
    notes = " ".join(cfg.notes)
    assert ("no published weights" in notes) if small else (f"RedNet{depth}_pretrained.pdparams" in notes)


@pytest.mark.parametrize("name", NAMES)
def test_every_name_builds(name):
    """On the meta device (no memory, no init cost): the same architecture as involution.create_model's."""
    with torch.device("meta"):
        model, ours = timm.create_model(name), create_model(name)
    assert type(model) is type(ours) and model.model_name == name
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ours.state_dict().items()]
    assert model.num_classes == 1000 and model.feature_info.reduction() == ours.feature_info.reduction()
    assert model.pretrained_cfg["architecture"] == name and "resize" in model.pretrained_cfg  # our extras stay


@pytest.mark.parametrize("features_only", [False, True])
def test_device_and_dtype_keywords(features_only):
    """timm's factory keywords, without a device context: everything is made there, in that dtype, not recorded."""
    model = timm.create_model("rednet50", device="meta", dtype=torch.bfloat16, features_only=features_only)
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    assert {t.device.type for t in tensors.values()} == {"meta"}
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16, torch.int64}  # int64: BatchNorm's counters
    recorded = {**getattr(model, "model_kwargs", {}), **model._model_args}  # ours (no FeatureListNet), timm's
    assert not {"device", "dtype"} & set(recorded)
    out = model(torch.randn(1, 3, 64, 64, device="meta", dtype=torch.bfloat16))
    assert [o.shape[1] for o in out] == [256, 512, 1024, 2048] if features_only else out.shape == (1, 1000)


def test_same_outputs_as_involution_create_model(tmp_path):
    theirs, ours = tiny_pair()
    assert theirs.model_kwargs == ours.model_kwargs
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    # model_name / model_kwargs recorded: the file rebuilds the same model without timm
    again = load_model(save_checkpoint(theirs, tmp_path / "t.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), rtol=0, atol=0)
    assert_exact_comparisons_see_every_involution(ours)


def test_full_width_model_matches_too():
    x = batch(1, 64)
    theirs, ours = pair("rednet26", x=x)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    assert_exact_comparisons_see_every_involution(ours, lambda m: m(x))


def test_classifier_interface():
    model, _ = tiny_pair()
    assert model.num_features == model.head_hidden_size == 512 and model.get_classifier().out_features == 10
    model.reset_classifier(5, "avg")
    assert model.get_classifier().out_features == 5 and model.num_classes == 5
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(batch()).shape == (2, 512)
    with pytest.raises(ValueError, match="average pooling"):
        model.reset_classifier(5, "max")


# -- pretrained weights -------------------------------------------------------------------------------------------


def official_file(model: nn.Module, path) -> str:
    """``model``'s weights in the official mmcls layout (``backbone.`` / ``head.fc.`` keys, in a dict)."""
    torch.save({"meta": {"mmcls_version": "0.12.0"}, "state_dict": ours_to_official(model.state_dict())}, path)
    return str(path)


def test_pretrained_from_our_safetensors(tmp_path):
    _, ours = tiny_pair()
    path = save_checkpoint(ours, tmp_path / "ours.safetensors")
    model = timm.create_model("rednet26_small", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **TINY)
    assert model.pretrained_cfg["file"] == str(path) and model.pretrained_cfg["custom_load"] is True
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ours(x), rtol=0, atol=0)
    assert_exact_comparisons_see_every_involution(ours)


def test_pretrained_official_file_with_another_class_count(tmp_path):
    _, ours = tiny_pair()
    path = official_file(ours, tmp_path / "official.pth")
    with pytest.warns(UserWarning, match="classifier does not match"):
        model = timm.create_model("rednet26_small", pretrained=True, pretrained_cfg_overlay={"file": path},
                                  num_classes=7, width=0.25)
    model.eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ours.forward_features(x), rtol=0, atol=0)
        assert model(x).shape == (2, 7)
    assert_exact_comparisons_see_every_involution(ours, lambda m: m.forward_features(x))
    assert model.fc.bias.abs().max().item() == 0.0 and model.fc.weight.std().item() < 0.02  # re-initialised


def test_checkpoint_path_uses_timms_loader(tmp_path):
    """timm's ``checkpoint_path=`` takes our safetensors (same keys, same class count); other layouts need the
    pretrained_cfg_overlay file (docs/models.md)."""
    _, ours = tiny_pair()
    path = save_checkpoint(ours, tmp_path / "ours.safetensors")
    model = timm.create_model("rednet26_small", checkpoint_path=str(path), **TINY).eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=0, atol=0)
    assert_exact_comparisons_see_every_involution(ours)
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("rednet26_small", checkpoint_path=official_file(ours, tmp_path / "o.pth"), **TINY)


@pytest.mark.parametrize("name", ["rednet50", "rednet152_small"])
def test_pretrained_without_a_file_says_where_weights_are(name):
    with pytest.raises(RuntimeError, match="downloads nothing") as err:
        timm.create_model(name, pretrained=True)
    message = str(err.value)
    assert "pretrained_cfg_overlay=dict(file=PATH)" in message
    if name == "rednet50":
        assert "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/RedNet50_pretrained.pdparams" in message
    else:
        assert "_small variants have no published weights" in message


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def test_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="refused to load"):
        timm.create_model("rednet26_small", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **TINY)
    with pytest.raises(RuntimeError, match="weights_only"):  # timm's own loader refuses it as well
        timm.create_model("rednet26_small", checkpoint_path=str(path), **TINY)
    assert not marker.exists()


# -- features -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feature_cls,out_indices", [(None, None), ("getter", None), (None, (1, 3)), ("getter", (0, 2))]
)
def test_features_only_gives_our_maps(tmp_path, feature_cls, out_indices):
    _, ours = tiny_pair()
    path = str(save_checkpoint(ours, tmp_path / "ours.safetensors"))
    kwargs = {k: v for k, v in {"feature_cls": feature_cls, "out_indices": out_indices}.items() if v is not None}
    net = timm.create_model("rednet26_small", features_only=True, pretrained=True,
                            pretrained_cfg_overlay={"file": path}, **TINY, **kwargs).eval()
    assert isinstance(net, FeatureGetterNet if feature_cls == "getter" else FeatureListNet)
    picked = out_indices or (0, 1, 2, 3)  # the four stages by default
    backbone = create_model("rednet26_small", features_only=True, out_indices=picked, checkpoint=path, **TINY).eval()
    assert net.feature_info.channels() == backbone.feature_info.channels()
    assert net.feature_info.reduction() == backbone.feature_info.reduction()
    x = batch()
    with torch.no_grad():
        got, want = net(x), backbone(x)
    assert len(got) == len(want) == len(picked)
    # the getter runs our forward_intermediates: the same maps exactly; FeatureListNet calls the stages itself
    # (float rounding allowed)
    tol = {"rtol": 0, "atol": 0} if feature_cls == "getter" else {"rtol": 1e-5, "atol": 1e-6}
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)
    assert_every_involution_matters(backbone, lambda m: m(x), **tol)
    if feature_cls == "getter" and max(picked) < 3:  # the getter pruned what it does not need
        assert not hasattr(net.model, "layer4")


# -- training -----------------------------------------------------------------------------------------------------


def test_layer_decay_scales_grow_with_depth():
    model = timm.create_model("rednet26_small", **TINY)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=1e-4, layer_decay=0.75)
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(scale) == {id(p) for p in names.values()}

    def depth_of(name: str) -> tuple:
        parts = name.split(".")
        if parts[0].startswith("layer"):
            return (int(parts[0][5:]), int(parts[1]))
        return (0, 0) if parts[0] in ("stem", "maxpool") else (9, 0)  # the head last

    groups = {}
    for name, p in names.items():
        groups.setdefault(depth_of(name), set()).add(scale[id(p)])
    assert all(len(s) == 1 for s in groups.values())  # one scale per block
    ordered = [next(iter(groups[k])) for k in sorted(groups)]
    assert len(ordered) == 1 + 8 + 1  # stem, the 1 + 2 + 4 + 1 blocks, the head
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)
    assert ordered[-1] == 1.0 and ordered[0] == pytest.approx(0.75 ** 9)
    assert list(model.group_matcher(coarse=True)) == ["stem", "blocks"]


def test_data_config_and_transform():
    from PIL import Image

    model = timm.create_model("rednet26")
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
    assert config["interpolation"] == "bilinear" and config["mean"] == _rednet_cfg(26, False)["mean"]
    transform = create_transform(**config)
    image = Image.new("RGB", (300, 260), (120, 30, 200))
    assert transform(image).shape == (3, 224, 224)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = timm.create_model("rednet26_small", **TINY).train()
    optimizer = create_optimizer_v2(model, "adamw", lr=3e-3, weight_decay=0.0)
    x, y = batch(8), torch.arange(8) % 10
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# -- timm stays optional ------------------------------------------------------------------------------------------


def test_involution_imports_without_timm():
    code = (
        "import sys\n"
        "sys.modules['timm'] = None  # as if timm were not installed: any import of it fails\n"
        "import involution\n"
        "from involution.models import create_model\n"
        "assert 'involution.models.timm_registry' not in sys.modules\n"
        "assert create_model('rednet26_small', num_classes=3, width=0.25).num_classes == 3\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "timm" not in result.stderr  # no warning about it either
