"""Detection and segmentation end to end on tiny generated scenes: train, resume exactly, evaluate, predict, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import StopAfter

from involution.cli import main
from involution.layers import Involution2d
from involution.tasks.dense import DenseConfig, resume_dense_config
from involution.tasks.engine.loop import train
from involution.tasks.dense.inference import evaluate_checkpoint, load_dense_checkpoint, predict_files
from involution.tasks.detection import DetectionTask
from involution.tasks.segmentation import SegmentationTask
from involution.tasks.engine.state import load_training_state

TINY_DET = {"backbone_kwargs": {"width": 0.125}, "fpn_channels": 16}
TINY_SEG = {"backbone_kwargs": {"width": 0.125}, "neck_channels": 16, "head_channels": 8}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tmp_path_factory.mktemp("scenes") / "digits-64"


def tiny_config(task: str, scenes, **overrides) -> DenseConfig:
    values = dict(task=task, scenes_dir=str(scenes), num_train=8, num_val=4, image_size=64, epochs=2, batch_size=4,
                  model_kwargs=dict(TINY_DET if task == "detect" else TINY_SEG), seed=0)
    values.update(overrides)
    return DenseConfig(**values)


def _weights(run):
    return load_training_state(run / "checkpoints" / "last.pt")["model"]


def test_detection_run_directory_and_checkpoint(tmp_path, scenes):
    result = train(DetectionTask(), tiny_config("detect", scenes), out=tmp_path / "run", progress=False)
    run = result.run_dir
    assert result.status == "finished"
    for name in ("config.json", "provenance.json", "metrics.json", "metrics.csv", "curves.png",
                 "checkpoints/last.pt", "checkpoints/last.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    last = metrics["history"][-1]
    for key in ("train_loss", "train_loss_classifier", "train_loss_box_reg", "train_loss_objectness"):
        assert math.isfinite(last[key]), key
    assert 0.0 <= last["val_bbox_AP"] <= 1.0 and "val_segm_AP" not in last
    assert metrics["classes"] == [str(d) for d in range(10)] and metrics["metric"] == "bbox_AP"
    best = metrics["best_epoch"]
    assert (run / "checkpoints" / "best.safetensors").is_file() == (best > 0)
    ckpt = load_dense_checkpoint(run / "checkpoints" / "last.safetensors")
    assert ckpt.task == "detect" and ckpt.classes == metrics["classes"]
    assert ckpt.model.model_name == "fasterrcnn_rednet50_fpn"
    state = ckpt.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in _weights(run).items()), "last.safetensors == last.pt weights"


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, scenes, task):
    kind = DetectionTask() if task == "detect" else SegmentationTask()
    config = tiny_config(task, scenes, epochs=2)
    full = train(kind, config, out=tmp_path / "full", progress=False)
    part = train(kind, config, out=tmp_path / "part", progress=False, stop_flag=StopAfter(1))
    assert part.status == "interrupted"
    assert load_training_state(part.run_dir / "checkpoints" / "last.pt")["step_in_epoch"] == 1
    resumed = train(kind, resume_dense_config(part.run_dir), out=part.run_dir, resume=True, progress=False)
    assert resumed.status == "finished"
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not exact"
    metric = f"val_{kind.metric}"
    assert full.metrics["history"][-1][metric] == resumed.metrics["history"][-1][metric]


def test_resume_refuses_other_settings(tmp_path, scenes):
    part = train(SegmentationTask(), tiny_config("segment", scenes, epochs=1), out=tmp_path / "run",
                       progress=False, stop_flag=StopAfter(1))
    with pytest.raises(ValueError, match="lr"):
        resume_dense_config(part.run_dir, {"lr": 0.5})
    with pytest.raises(FileExistsError, match="--resume"):
        train(SegmentationTask(), tiny_config("segment", scenes, epochs=1), out=part.run_dir, progress=False)


def test_mask_rcnn_with_involution_neck_and_head_reports_mask_ap(tmp_path, scenes):
    kwargs = {**TINY_DET, "neck": "involution", "head": "involution"}
    config = tiny_config("detect", scenes, model="maskrcnn_rednet50_fpn", model_kwargs=kwargs, epochs=1)
    result = train(DetectionTask(), config, out=tmp_path / "mask", progress=False)
    last = result.metrics["history"][-1]
    assert 0.0 <= last["val_segm_AP"] <= 1.0 and "train_loss_mask" in last
    model = load_dense_checkpoint(result.run_dir).model
    assert any(isinstance(m, Involution2d) for m in model.modules())
    report = evaluate_checkpoint(DetectionTask(), result.run_dir, pictures=2, progress=False)
    assert set(report["metrics"]) >= {"bbox_AP", "segm_AP"} and len(report["pictures"]) == 2
    assert report["metrics"]["segm_AP"] == pytest.approx(last["val_segm_AP"])


def test_segmentation_upernet_trains_with_aux_and_evaluates(tmp_path, scenes):
    kwargs = {"backbone_kwargs": {"width": 0.125}, "head_channels": 8, "aux_channels": 8}
    config = tiny_config("segment", scenes, model="upernet_rednet50", model_kwargs=kwargs, epochs=1)
    result = train(SegmentationTask(), config, out=tmp_path / "uper", progress=False)
    last = result.metrics["history"][-1]
    assert math.isfinite(last["train_loss_aux"]) and 0.0 <= last["val_mIoU"] <= 1.0
    assert result.metrics["classes"][0] == "background" and len(result.metrics["classes"]) == 11
    report = evaluate_checkpoint(SegmentationTask(), result.run_dir, pictures=1, progress=False)
    assert report["metrics"]["mIoU"] == pytest.approx(last["val_mIoU"])
    first = sorted((scenes / "images" / "val").iterdir())[0]
    [(picture, output)] = predict_files(SegmentationTask(), result.run_dir, [first], out_dir=tmp_path / "pred")
    assert picture.is_file() and output["labels"].shape == (64, 64)


def test_cli_detect_train_eval_predict(tmp_path, scenes, capsys):
    out = tmp_path / "cli"
    kwargs = ["backbone_kwargs={'width':0.125}", "fpn_channels=16", "neck='involution'"]
    rc = main(["detect", "train", "--scenes-dir", str(scenes), "--num-train", "8", "--num-val", "4",
               "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--model-kwargs", *kwargs,
               "--out", str(out), "--no-progress"])
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["model_kwargs"]["neck"] == "involution"
    assert main(["detect", "eval", "--checkpoint", str(out), "--pictures", "1", "--no-progress"]) == 0
    assert "bbox_AP" in capsys.readouterr().out
    assert (out / "eval-scenes.json").is_file() and (out / "predictions" / "val-0000.png").is_file()
    first = sorted((scenes / "images" / "val").iterdir())[0]
    assert main(["detect", "predict", "--checkpoint", str(out), str(first), "--threshold", "0.0"]) == 0
    assert (out / "predictions" / f"{first.stem}.png").is_file()
    # a detection checkpoint is refused by the segmentation commands, with the command to use
    assert main(["segment", "eval", "--checkpoint", str(out)]) == 2
    assert "involution detect" in capsys.readouterr().err


def test_user_errors_name_the_problem(tmp_path, capsys):
    assert main(["detect", "train", "--data", "coco", "--out", str(tmp_path / "x")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["segment", "eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["detect", "train", "--data", "coco", "--data-dir", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not found" in capsys.readouterr().err


TORCHRUN_KWARGS = {
    "detect": ["backbone_kwargs={'width':0.125}", "fpn_channels=16"],
    "segment": ["backbone_kwargs={'width':0.125}", "neck_channels=16", "head_channels=8"],
}


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_torchrun_two_processes(tmp_path, scenes, task):
    out = tmp_path / "ddp"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "involution",
           task, "train", "--scenes-dir", str(scenes), "--num-train", "8", "--num-val", "4", "--image-size", "64",
           "--epochs", "1", "--batch-size", "4", "--model-kwargs", *TORCHRUN_KWARGS[task], "--out", str(out),
           "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    metric = "val_bbox_AP" if task == "detect" else "val_mIoU"
    assert 0.0 <= metrics["history"][-1][metric] <= 1.0
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2
    assert len(list(out.glob("provenance*.json"))) == 1, "only rank 0 writes"


@pytest.mark.parametrize(("task", "model", "extra"), [
    ("detect", "retinanet_rednet50_fpn", {"neck": "involution"}),
    ("detect", "fasterrcnn_rednet50_fpn", {"neck": "involution", "head": "involution"}),
    ("segment", "fpn_rednet50", {"neck": "involution"}),
    ("segment", "upernet_rednet50", {"neck": "involution", "head_channels": 8, "aux_channels": 8}),
])
def test_every_variant_trains_and_evaluates_on_scenes(tmp_path, scenes, task, model, extra):
    kind = DetectionTask() if task == "detect" else SegmentationTask()
    kwargs = {**(TINY_DET if task == "detect" else TINY_SEG), **extra}
    if model == "upernet_rednet50":
        kwargs.pop("neck_channels")
    config = tiny_config(task, scenes, model=model, model_kwargs=kwargs, epochs=1)
    result = train(kind, config, out=tmp_path / model, progress=False)
    value = result.metrics["history"][-1][f"val_{kind.metric}"]
    assert result.status == "finished" and 0.0 <= value <= 1.0
    model = load_dense_checkpoint(result.run_dir).model
    backbone = ("backbone.body.", "backbone.stem", "backbone.layer")  # the RedNet's own involutions
    outside = [n for n, m in model.named_modules() if isinstance(m, Involution2d) and not n.startswith(backbone)]
    assert outside, "the involution neck / head is in the saved model"
