"""The video task: moving-item clips (determinism, labels that follow the motion), the 3-D RedNet and its Conv3d
twin (shapes, gradients), a short training run on moving digits and its exact resume, the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from involution.cli import main
from involution.models import count_params, create_model
from involution.tasks.video import ClipSpec, VideoConfig, load_clips, resume_config, train
from involution.tasks.video.data import draw_path, render
from model_weights import assert_every_involution_matters, weights_matter

SPEC = ClipSpec(frames=6, canvas=20, item_size=8, directions=8, min_speed=1.0, max_speed=2.0, jitter=0)
TINY = {"data": "digits", "frames": 4, "image_size": 16, "item_size": 8, "max_speed": 1.5, "min_speed": 1.0,
        "jitter": 0, "train_clips": 64, "val_clips": 32, "test_clips": 32, "batch_size": 16, "epochs": 2,
        "threads": 1, "model_kwargs": {"widths": (16, 16, 32), "stem_width": 8}}


def test_clips_are_deterministic_and_splits_fixed():
    a = load_clips("digits", None, SPEC, (40, 20, 20), seed=3)
    b = load_clips("digits", None, SPEC, (40, 20, 20), seed=3)
    other = load_clips("digits", None, SPEC, (40, 20, 20), seed=4)
    for split in ("train", "val", "test"):
        for key in ((0, 5), (2, 7)) if split == "train" else (0, 13):
            x, label = getattr(a, split)[key]
            y, label_b = getattr(b, split)[key]
            assert torch.equal(x, y) and label == label_b
    assert x.shape == (1, 6, 20, 20) and x.dtype == torch.float32
    # validation and test clips do not depend on the run seed; training clips do, and change each epoch
    assert torch.equal(a.val[3][0], other.val[3][0]) and torch.equal(a.test[3][0], other.test[3][0])
    assert not torch.equal(a.train[(0, 3)][0], other.train[(0, 3)][0])
    assert not torch.equal(a.train[(0, 3)][0], a.train[(1, 3)][0])
    # train and val items are disjoint parts of digits' training split
    assert len(a.train.items) + len(a.val.items) == 1437 and len(a.test.items) == 360


def _centre(frame: torch.Tensor) -> np.ndarray:
    ys, xs = torch.nonzero(frame > 0, as_tuple=True)
    return np.array([ys.float().mean().item(), xs.float().mean().item()])


@pytest.mark.parametrize("seed", range(40))
def test_label_is_the_direction_of_motion(seed):
    label, corners = draw_path(SPEC, seed)
    assert 0 <= label < 8
    assert corners.min() >= 0 and corners.max() <= SPEC.canvas - SPEC.item_size
    clip = render(torch.full((8, 8), 200, dtype=torch.uint8), corners, SPEC.canvas)
    move = _centre(clip[0, -1]) - _centre(clip[0, 0])
    angle = math.atan2(-move[0], move[1])  # rows grow downwards; 0 is right, counter-clockwise
    assert round(angle / (2 * math.pi / 8)) % 8 == label


def test_still_clips_repeat_the_first_frame():
    moving = load_clips("digits", None, SPEC, (8, 8, 8), seed=0).val
    still = load_clips("digits", None, dataclasses.replace(SPEC, still=True), (8, 8, 8), seed=0).val
    for i in range(8):
        (m, label_m), (s, label_s) = moving.raw(i), still.raw(i)
        assert label_m == label_s and torch.equal(s[0, 0], m[0, 0])
        assert all(torch.equal(s[0, t], s[0, 0]) for t in range(SPEC.frames))


def test_every_direction_occurs():
    labels = {draw_path(SPEC, seed)[0] for seed in range(200)}
    assert labels == set(range(8))


def test_path_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        ClipSpec(frames=10, canvas=20, item_size=8, max_speed=2.0).check()


@pytest.mark.parametrize("name", ["video_rednet_tiny", "video_resnet_tiny"])
def test_models_shapes_and_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, in_chans=1, widths=(16, 16, 32), stem_width=8)
    x = torch.randn(2, 1, 4, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 8)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # channels_last_3d computes the same, with weights under which every residual branch (and so every
    # Involution3d) matters: a fresh model's zero-initialised branches would hide a wrong 3-D path
    clip = x.detach()
    model = weights_matter(model, run=lambda m: m(clip))
    with torch.no_grad():
        plain = model(clip)
        fast = model.to(memory_format=torch.channels_last_3d)(clip.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(fast, plain)
    if name == "video_rednet_tiny":  # silencing any one Involution3d moves the logits far beyond that tolerance
        assert_every_involution_matters(model, lambda m: m(clip), rtol=1.3e-6, atol=1e-5)  # assert_close's


def test_twins_differ_only_in_the_middle_layer():
    inv = create_model("video_rednet_tiny", num_classes=8, in_chans=1)
    conv = create_model("video_resnet_tiny", num_classes=8, in_chans=1)
    names = lambda m: {k for k in m.state_dict() if ".middle." not in k}
    assert names(inv) == names(conv)
    assert type(inv.stages[0][0].middle).__name__ == "Involution3d"
    assert isinstance(conv.stages[0][0].middle, torch.nn.Conv3d)
    assert count_params(inv) < count_params(conv)
    with pytest.raises(ValueError, match="clips"):
        inv(torch.randn(1, 1, 16, 16))


def test_train_and_resume_exactly(tmp_path):
    # a constant schedule, so the first epoch of a 1-epoch run is the first epoch of a 2-epoch run
    tiny = {**TINY, "schedule": "constant", "warmup_epochs": 0.0, "lr": 0.05}
    full = train(VideoConfig(**tiny), out=tmp_path / "full", progress=False, quiet=True)
    assert full.status == "finished"
    assert 0.0 <= full.metrics["test_acc"] <= 1.0 and full.metrics["test_count"] == 32
    assert (tmp_path / "full" / "checkpoints" / "last.pt").is_file()
    # a run stopped after one epoch, then resumed, ends where the uninterrupted one did
    train(VideoConfig(**{**tiny, "epochs": 1}), out=tmp_path / "part", progress=False, quiet=True)
    config = resume_config(tmp_path / "part", {"epochs": 2})
    resumed = train(config, out=tmp_path / "part", resume=True, progress=False, quiet=True)
    assert [r["train_loss"] for r in resumed.metrics["history"]] == pytest.approx(
        [r["train_loss"] for r in full.metrics["history"]], rel=1e-6)
    assert resumed.metrics["test_acc"] == pytest.approx(full.metrics["test_acc"])


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    code = main(["train-video", "--model", "video_resnet_tiny", "--epochs", "1", "--frames", "4",
                 "--image-size", "16", "--item-size", "8", "--max-speed", "1.5", "--jitter", "0",
                 "--train-clips", "32", "--val-clips", "16", "--test-clips", "16", "--batch-size", "16",
                 "--model-kwargs", "widths=(16,16,32)", "stem_width=8", "--threads", "1", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "video_resnet_tiny" and metrics["status"] == "finished"
    assert main(["train-video", "--max-speed", "9", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
