"""Checkpoints give the preprocessing their run trained with (issue 26): a digits run normalises with the digits'
own mean and std at 8x8, and every reader of its files (load_model, create_model(checkpoint=...), timm, predict)
must say so, not the model family's ImageNet defaults at 32x32. Also: every file of a run gets the umask's mode."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from involution.cli import main
from involution.models import create_model, load_model
from involution.models import read_safetensors
from involution.tasks.classification import load_classifier, predict

UMASK = 0o022


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A one-epoch digits run trained through the command line, under umask 022."""
    out = tmp_path_factory.mktemp("cli") / "run"
    old = os.umask(UMASK)
    try:
        argv = ["train", "--epochs", "1", "--model-kwargs", "width=0.125", "--train-fraction", "0.1",
                "--out", str(out), "--no-progress"]
        assert main(argv) == 0
    finally:
        os.umask(old)
    return out


def recorded_spec(run):
    _, meta = read_safetensors(run / "checkpoints" / "best.safetensors", metadata_only=True)
    return json.loads(meta["data_spec"])


def assert_cfg_is_the_spec(cfg, spec):
    assert tuple(cfg["input_size"]) == (spec["in_chans"], spec["image_size"], spec["image_size"])
    assert list(cfg["mean"]) == spec["mean"] and list(cfg["std"]) == spec["std"]


def test_the_recorded_spec_is_not_the_family_default(cli_run):
    """Guard of the tests below: the run's numbers differ from the family's, so a reader using those fails."""
    spec = recorded_spec(cli_run)
    family = create_model("rednet26_small", in_chans=1, width=0.125).pretrained_cfg
    assert spec["image_size"] == 8 and tuple(family["input_size"]) == (1, 32, 32)
    assert abs(spec["mean"][0] - family["mean"][0]) > 0.1 and abs(spec["std"][0] - family["std"][0]) > 0.1


def test_every_reader_of_a_checkpoint_gives_the_runs_preprocessing(cli_run):
    spec = recorded_spec(cli_run)
    best = cli_run / "checkpoints" / "best.safetensors"
    assert_cfg_is_the_spec(load_model(best).pretrained_cfg, spec)
    assert_cfg_is_the_spec(create_model("rednet26_small", num_classes=10, in_chans=1, width=0.125,
                                        checkpoint=best).pretrained_cfg, spec)
    for source in (cli_run, best, cli_run / "checkpoints" / "last.pt"):
        model, loaded = load_classifier(source)
        assert_cfg_is_the_spec(model.pretrained_cfg, spec)
        assert loaded.mean == spec["mean"] and loaded.image_size == 8
    # the pretrained_cfg saved beside the weights says the same
    _, meta = read_safetensors(best, metadata_only=True)
    assert_cfg_is_the_spec(json.loads(meta["pretrained_cfg"]), spec)


def test_timm_resolves_the_runs_preprocessing(cli_run):
    timm = pytest.importorskip("timm")
    spec = recorded_spec(cli_run)
    best = cli_run / "checkpoints" / "best.safetensors"
    for model in (load_model(best), timm.create_model("rednet26_small", pretrained=True, num_classes=10, in_chans=1,
                                                      width=0.125, pretrained_cfg_overlay={"file": str(best)})):
        config = timm.data.resolve_data_config(model=model)
        assert tuple(config["input_size"]) == (1, 8, 8)
        assert list(config["mean"]) == spec["mean"] and list(config["std"]) == spec["std"]


def test_timm_preprocessing_from_pretrained_cfg_predicts_as_predict(cli_run, tmp_path):
    """A user who preprocesses with timm's transforms from pretrained_cfg gets predict's probabilities."""
    timm = pytest.importorskip("timm")
    from PIL import Image
    from sklearn.datasets import load_digits

    path = tmp_path / "digit.png"
    Image.fromarray((load_digits().images[5] * 255 / 16).astype(np.uint8)).save(path)
    best = cli_run / "checkpoints" / "best.safetensors"
    [(_, top)] = predict(best, [path], topk=10)
    model = load_model(best).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        probs = model(transform(Image.open(path)).unsqueeze(0)).softmax(dim=1)[0]
    classes = recorded_spec(cli_run)["classes"]
    for name, p in top:
        assert probs[classes.index(name)].item() == pytest.approx(p, abs=1e-5), name


def test_every_file_of_a_run_gets_the_umask_mode(cli_run):
    """safetensors writes its files 0600; written through atomic_path they get 0666 less the umask, as the rest."""
    modes = {p.relative_to(cli_run).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in cli_run.rglob("*") if p.is_file()}
    assert "checkpoints/best.safetensors" in modes and "checkpoints/last.pt" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o666 & ~UMASK} == {}


@pytest.mark.parametrize("size", [224, 443])
def test_timm_resizes_and_crops_an_image_folder_run_as_predict(size):
    """Image folders are evaluated at a resize of size / 0.875 then a centre crop: timm must get the same sizes
    back from crop_pct (a plain size / resize gives one pixel less for 443)."""
    timm = pytest.importorskip("timm")
    from involution.models.checkpoint_checks import apply_data_spec
    from involution.tasks.classification.data import DataSpec
    from involution.tasks.classification.transforms import build_image_transform

    spec = DataSpec("imagefolder", ["cat", "dog"], 3, size, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], round(size / 0.875))
    model = create_model("rednet26", num_classes=2, width=0.125)
    apply_data_spec(model, spec.to_dict(), "run/best.safetensors")
    ours = build_image_transform(spec).transforms
    theirs = timm.data.create_transform(**timm.data.resolve_data_config(model=model)).transforms
    assert [list(ours[1].size), tuple(ours[2].size)] == [[round(size / 0.875)], (size, size)]
    assert [theirs[0].size, tuple(theirs[1].size)] == [round(size / 0.875), (size, size)]
