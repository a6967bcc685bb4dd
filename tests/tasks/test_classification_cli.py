import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from involution.cli import main
from involution.models import create_model


def test_train_command_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--epochs", "1", "--model-kwargs", "width=0.125", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed
    config = json.loads((out / "config.json").read_text())
    assert config["model_kwargs"] == {"width": 0.125} and config["epochs"] == 1 and config["data"] == "digits"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "fashion-mnist"], "--data-dir"),
        (["train", "--data", "cifar10", "--data-dir", "/no/such/folder"], "/no/such/folder"),
        (["train", "--model", "rednet27_small"], "unknown model"),
        (["train", "--model-kwargs", "width"], "KEY=VALUE"),
        (["train", "--resume"], "--out"),
        (["eval", "--checkpoint", "/no/such/run", "--data", "digits"], "/no/such/run"),
    ],
)
def test_user_errors_are_one_line_messages(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_prints_top1_top5_and_writes_a_confusion_matrix(trained_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(trained_run), "--data", "digits", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed
    report = json.loads((tmp_path / "eval-digits.json").read_text())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 360 == report["count"]
    assert report["top1"] == pytest.approx(np.trace(matrix) / 360)
    assert report["top1"] > 0.3, "three epochs learn something"
    assert (tmp_path / "confusion-digits.png").stat().st_size > 1000
    # the same numbers as the run's own final test evaluation
    metrics = json.loads((trained_run / "metrics.json").read_text())
    last = json.loads((tmp_path / "eval-digits.json").read_text())
    main(["eval", "--checkpoint", str(trained_run / "checkpoints" / "last.safetensors"), "--data", "digits",
          "--out", str(tmp_path / "last"), "--no-progress"])
    last = json.loads((tmp_path / "last" / "eval-digits.json").read_text())
    assert last["top1"] == pytest.approx(metrics["test_acc"])


def test_predict_prints_top_k_classes_per_image(trained_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    from involution.tasks.classification import load_classifier
    from involution.tasks.classification.transforms import build_image_transform

    digits = load_digits()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(str(path))
    assert main(["predict", "--checkpoint", str(trained_run), "--topk", "3", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 3 * 4
    model, spec = load_classifier(trained_run)
    with torch.no_grad():
        logits = model(build_image_transform(spec)(Image.open(paths[0])).unsqueeze(0))
    assert lines[1].split()[-1] == spec.classes[int(logits.argmax())]
    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["predict", "--checkpoint", str(trained_run), str(tmp_path / "notes.txt")]) == 2
    assert "not an image" in capsys.readouterr().err


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("INVOLUTION_DEBUG", None)
    return env


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "involution", "train", "--epochs", "200", "--model-kwargs", "width=0.125",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        deadline = time.time() + 240
        while not (out / "metrics.json").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "continue with: involution train --resume" in output
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    done = subprocess.run([*cmd[:3], "train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_torchrun_two_processes_on_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "involution",
           "train", "--epochs", "1", "--model-kwargs", "width=0.125", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(GLOO_SOCKET_IFNAME="lo"), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and "OMP_NUM_THREADS=1" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_count"] == 360, "each test image counted once: no DistributedSampler padding"
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2
    assert len(list(out.glob("provenance*.json"))) == 1, "only rank 0 writes"


def test_sync_batchnorm_conversion():
    from involution.tasks.engine.runtime import convert_sync_bn

    model = convert_sync_bn(create_model("rednet26_small", num_classes=10, width=0.125))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
