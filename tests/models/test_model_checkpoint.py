"""Checkpoints: own safetensors format, official mmcls layout (parity with committed numbers), errors."""

import json
import os
import warnings

import pytest
import torch
from _rednet_parity import load_reference, parity_input, seeded_state_dict  # the official parity's own weights
from backend_requirements import require_or_skip

from involution.models import (
    convert_checkpoint,
    create_model,
    load_checkpoint,
    load_model,
    official_to_ours,
    ours_to_official,
    read_checkpoint,
    save_checkpoint,
)
from involution.models import read_safetensors
from model_weights import assert_every_involution_matters, randomise_weights, weights_matter

SMALL = {"num_classes": 10, "width": 0.25, "zero_init_residual": False}


def images(n: int = 2, h: int = 16, w: int = 16) -> torch.Tensor:
    """The input the round trips compare on: ``(n, 3, h, w)``, seeded."""
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


def small_model(**kwargs):
    """A narrow model whose every involution matters on :func:`images` (tests/model_weights.py)."""
    return weights_matter(create_model("rednet26_small", **{**SMALL, **kwargs}), run=lambda m: m(images()))


# -- own format ---------------------------------------------------------------------------------------------------


def test_round_trip_gives_equal_outputs(tmp_path):
    model = small_model(stem_kernel_size=5)
    path = save_checkpoint(model, tmp_path / "sub" / "model.safetensors", metadata={"epoch": 3, "note": "hi"})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp left
    x = images()
    rebuilt = load_model(path).eval()
    assert rebuilt.model_name == "rednet26_small" and rebuilt.stem[1].kernel_size == (5, 5)
    again = create_model("rednet26_small", checkpoint=path, **SMALL, stem_kernel_size=5).eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.isfinite(ref).all() and ref.abs().max() > 1e-3
        torch.testing.assert_close(rebuilt(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(again(x), ref, rtol=0, atol=0)
    assert_every_involution_matters(model, lambda m: m(x))  # compared exactly
    _, meta = read_checkpoint(path)
    assert meta["format"] == "involution" and meta["model"] == "rednet26_small"
    assert json.loads(meta["model_kwargs"])["stem_kernel_size"] == 5
    assert meta["note"] == "hi" and json.loads(meta["epoch"]) == 3


def test_load_model_overrides_and_grad_checkpointing(tmp_path):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="re-initialised the classifier"):
        model = load_model(path, num_classes=4, grad_checkpointing=True)
    assert model.fc.out_features == 4 and model.grad_checkpointing


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), path)
    save_checkpoint(small_model(num_classes=3), path)
    assert read_checkpoint(path)[0]["fc.weight"].shape == (3, 512)
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_file_reads_with_the_safetensors_package(tmp_path):
    st = require_or_skip("safetensors.torch")
    model = small_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    theirs = st.load_file(str(path))
    ours = model.state_dict()
    assert theirs.keys() == ours.keys()
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], rtol=0, atol=0)
    st.save_file({"a": torch.arange(6.0).reshape(2, 3).to(torch.bfloat16)}, str(tmp_path / "x.safetensors"), {"k": "v"})
    tensors, meta = read_safetensors(tmp_path / "x.safetensors")
    assert meta == {"k": "v"} and tensors["a"].dtype == torch.bfloat16 and tensors["a"][1, 2] == 5


@pytest.mark.parametrize("cut", [0, 5, 100, -7])
def test_truncated_safetensors_names_the_path(tmp_path, cut):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        create_model("rednet26_small", checkpoint=bad, **SMALL)


def test_corrupt_header_names_the_path(tmp_path):
    path = save_checkpoint(small_model(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at "
    bad = tmp_path / "garbled.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="garbled.safetensors"):
        load_model(bad)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_pth_names_the_path(tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save(small_model().state_dict(), good)
    bad = tmp_path / f"{kind}.pth"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\x00garbage" * 50)
    with pytest.raises(ValueError, match=f"{kind}.pth"):
        create_model("rednet26_small", checkpoint=bad, **SMALL)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("rednet26_small", checkpoint="/nonexistent/nope.pth", **SMALL)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": small_model().state_dict(), "obj": warnings.WarningMessage}, path)
    with pytest.raises(ValueError, match=r"evil.pth.*Python objects.*warnings.WarningMessage") as info:
        create_model("rednet26_small", checkpoint=path, **SMALL)
    assert "weights_only" not in str(info.value)


def _not_checkpoints(tmp_path):
    """Files that are no checkpoint: text beginning with each byte that once crashed the pickle reader, random bytes
    (some behind a pickle's or a zip's first bytes), an empty file, a zip of something else, cut torch files."""
    import random
    import zipfile

    files = {f"text-{c}": f"{c} note\n".encode() for c in "at.Kq"}
    files.update({f"char-{c}": c.encode() for c in "at.Kq"})
    rng = random.Random(0)
    for i in range(12):
        files[f"random-{i}"] = rng.randbytes(rng.randrange(1, 3000))
        files[f"pickle-{i}"] = b"\x80\x02" + rng.randbytes(rng.randrange(0, 300))
    files["zip-random"] = b"PK\x03\x04" + rng.randbytes(500)
    files["empty"] = b""
    good = tmp_path / "good.pth"
    torch.save({"state_dict": small_model().state_dict()}, good)
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": small_model().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    for name, source in (("zip", good), ("legacy", legacy)):
        data = source.read_bytes()
        for cut in (1, 9, 40, 200, len(data) // 3, len(data) - 30):
            files[f"{name}-cut-{cut}"] = data[:cut]
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    files["other-zip"] = other.read_bytes()
    paths = []
    for name, data in files.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_files_that_are_no_checkpoint_give_one_error_naming_them(tmp_path):
    from involution.models.checkpoint import read_torch_file

    for path in _not_checkpoints(tmp_path):
        for read in (read_checkpoint, read_torch_file, load_model,
                     lambda p: create_model("rednet26_small", checkpoint=p, **SMALL)):
            with pytest.raises(ValueError) as info:
                read(path)
            message = str(info.value)
            assert str(path) in message, message
            assert "not a PyTorch, safetensors or PaddlePaddle checkpoint" in message or "truncated or corrupt" in message, message
            assert "weights_only" not in message, message


def test_numpy_scalars_in_metadata_are_fine(tmp_path):
    import numpy as np

    path = tmp_path / "np.pth"
    model = small_model()
    torch.save({"meta": {"best": np.float64(0.5), "step": np.int64(3)}, "state_dict": model.state_dict()}, path)
    create_model("rednet26_small", checkpoint=path, **SMALL)


def test_features_only_round_trip(tmp_path):
    x = images(2, 12, 10)
    backbone = weights_matter(create_model("rednet26_small", width=0.25, features_only=True, out_indices=(0, 1)),
                              run=lambda m: m(x))
    path = save_checkpoint(backbone, tmp_path / "backbone.safetensors")
    again = load_model(path).eval()
    assert again.features_only and again.feature_info.channels() == [64, 128] and not hasattr(again, "layer3")
    assert again.state_dict().keys() == backbone.state_dict().keys()
    with torch.no_grad():
        for got, ref in zip(again(x), backbone(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert_every_involution_matters(backbone, lambda m: m(x))  # compared exactly


def test_features_only_model_gives_the_classifiers_intermediates(tmp_path):
    """A backbone built from a classifier's checkpoint computes exactly the classifier's stage outputs."""
    classifier = small_model()
    path = save_checkpoint(classifier, tmp_path / "classifier.safetensors")
    backbone = create_model("rednet26_small", checkpoint=path, features_only=True, **SMALL).eval()
    x = images()
    with torch.no_grad():
        for got, ref in zip(backbone(x), classifier.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert_every_involution_matters(backbone, lambda m: m(x))  # compared exactly


def test_other_architecture_is_refused_with_keys_listed(tmp_path):
    path = save_checkpoint(create_model("resnet26_small", **SMALL), tmp_path / "resnet.safetensors")
    missing = r"resnet.safetensors.*\n  missing keys \(\d+\): stem\.0\.conv\.weight"
    with pytest.raises(RuntimeError, match=missing) as err, pytest.warns(UserWarning, match="written for model"):
        create_model("rednet26_small", checkpoint=path, **SMALL)
    assert "unexpected keys" in str(err.value) and "conv1.weight" in str(err.value)
    deeper = save_checkpoint(create_model("rednet38_small", **SMALL), tmp_path / "rednet38.safetensors")
    unexpected = r"unexpected keys \(\d+\): layer1\.1\."
    with pytest.raises(RuntimeError, match=unexpected), pytest.warns(UserWarning, match="'rednet38_small'"):
        create_model("rednet26_small", checkpoint=deeper, **SMALL)
    wider = save_checkpoint(create_model("rednet26_small", **{**SMALL, "width": 0.5}), tmp_path / "wide.safetensors")
    mismatched = (
        r"mismatched shapes \(\d+\): stem\.0\.conv\.weight \(checkpoint \(16, 3, 3, 3\), model \(8, 3, 3, 3\)\)"
    )
    with pytest.raises(RuntimeError, match=mismatched):
        create_model("rednet26_small", checkpoint=wider, **SMALL)


def test_other_class_count_loads_backbone_and_reinitialises_head(tmp_path):
    src = small_model(num_classes=10)
    path = save_checkpoint(src, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match=r"classifier does not match.*re-initialised the classifier"):
        model = create_model("rednet26_small", checkpoint=path, **{**SMALL, "num_classes": 4})
    assert model.fc.weight.shape == (4, 512)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.3) and torch.all(model.fc.bias == 0)
    theirs = src.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(v, theirs[k], rtol=0, atol=0)
    backbone = create_model("rednet26_small", checkpoint=path, features_only=True, **SMALL)  # head dropped silently
    assert backbone.feature_info.channels() == [64, 128, 256, 512]


def test_plain_torchvision_state_dict_loads_into_resnet50(tmp_path):
    import torchvision

    ref = randomise_weights(torchvision.models.resnet50()).eval()
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)
    model = create_model("resnet50", checkpoint=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


# -- official layout ----------------------------------------------------------------------------------------------

REFERENCE = load_reference()
VARIANTS = {"rednet26": {}, "rednet26_stem7": {"stem_kernel_size": 7}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_key_names_and_shapes_match_the_official_model(variant):
    with torch.device("meta"):
        model = create_model("rednet26", **VARIANTS[variant])
    ours = [[k, list(v.shape)] for k, v in ours_to_official(model.state_dict()).items()]
    assert ours == REFERENCE["models"][variant]["keys"]


def official_file(tmp_path, variant, extra=None):
    ref = REFERENCE["models"][variant]
    state_dict = seeded_state_dict({k: s for k, s in ref["keys"]}, seed=REFERENCE["seed"])
    state_dict.update(extra or {})
    path = tmp_path / f"{variant}_official.pth"
    torch.save(
        {"meta": {"mmcls_version": "0.12.0", "CLASSES": ["a", "b"], "epoch": 130}, "state_dict": state_dict}, path
    )
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parity_with_the_official_implementation(tmp_path, variant):
    """Logits of the official mmcls RedNet-26 on seeded random weights (every BN random, so involution matters)."""
    ref = REFERENCE["models"][variant]
    path = official_file(tmp_path, variant)
    model = create_model("rednet26", checkpoint=path, **VARIANTS[variant]).eval()
    with torch.no_grad():
        logits = model(parity_input())
    expect = torch.tensor
    torch.testing.assert_close(logits[:, :8], expect(ref["logits_first8"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[:, ref["logits_idx"]], expect(ref["logits_at_idx"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits.sum(1), expect(ref["logits_sum"]), rtol=0, atol=1e-3)
    assert logits.argmax(1).tolist() == ref["logits_argmax"]
    assert_every_involution_matters(model, lambda m: m(parity_input()), atol=1e-4)  # a wrong conversion shows

    with torch.no_grad():
        feats = model.forward_intermediates(parity_input(), intermediates_only=True)
    assert [list(f.shape) for f in feats] == ref["feature_shapes"]
    torch.testing.assert_close(torch.stack([f.mean() for f in feats]), expect(ref["feature_means"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.stack([f.abs().mean() for f in feats]), expect(ref["feature_abs_means"]), rtol=0, atol=1e-5
    )


def test_convert_checkpoint(tmp_path):
    src = official_file(tmp_path, "rednet26_stem7")
    dst = convert_checkpoint(src, tmp_path / "converted.safetensors")
    model = load_model(dst)
    assert model.model_name == "rednet26" and model.stem[1].kernel_size == (7, 7) and model.num_classes == 1000
    official = torch.load(src, weights_only=True)["state_dict"]
    converted = ours_to_official(model.state_dict())
    assert converted.keys() == official.keys()
    for k, v in official.items():
        torch.testing.assert_close(converted[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not an official mmcls or PaddleClas RedNet checkpoint"):
        convert_checkpoint(dst, tmp_path / "again.safetensors")


def test_features_only_backbone_loads_an_official_classifier_checkpoint(tmp_path):
    path = official_file(tmp_path, "rednet26")
    backbone = create_model("rednet26", checkpoint=path, features_only=True, out_indices=(1,))
    assert not hasattr(backbone, "layer3") and backbone.feature_info.channels() == [512]
    official = torch.load(path, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        backbone.layer2[0].conv2.conv2.conv.bias, official["backbone.layer2.0.conv2.conv2.conv.bias"]
    )


def test_detector_checkpoint_parts_are_ignored_with_a_warning(tmp_path):
    extra = {"neck.lateral_convs.0.conv.weight": torch.zeros(256, 256, 1, 1), "rpn_head.rpn_cls.bias": torch.zeros(3)}
    path = official_file(tmp_path, "rednet26", extra)
    with pytest.warns(UserWarning, match=r"ignored 2 keys of other parts \(neck, rpn_head\)"):
        report = load_checkpoint(create_model("rednet26"), path)
    assert report.layout == "official" and len(report.ignored) == 2 and not report.head_reinitialised


def test_official_mapping_is_prefix_stripping():
    sd = {
        "backbone.layer1.0.conv2.conv1.conv.weight": torch.zeros(1),
        "backbone.layer1.0.conv2.conv2.conv.bias": torch.zeros(1),
        "head.fc.weight": torch.zeros(1),
    }
    ours, ignored = official_to_ours(sd)
    assert list(ours) == ["layer1.0.conv2.conv1.conv.weight", "layer1.0.conv2.conv2.conv.bias", "fc.weight"]
    assert not ignored and list(ours_to_official(ours)) == list(sd)
