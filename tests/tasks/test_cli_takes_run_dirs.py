"""Every command that reads a checkpoint takes a run directory alone (issue 29, part 4): the model, its arguments,
class count, image size and data come from what the run recorded (tasks/engine/recorded.py); a value given that
contradicts the record is refused with one line naming both."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from model_weights import assert_every_involution_matters, weights_matter

from involution.cli import main
from involution.models import count_params, create_model, read_checkpoint, save_checkpoint
from involution.tasks.classification import load_classifier
from involution.tasks.classification.transforms import build_image_transform
from involution.tasks.deploy import load_export_model
from involution.tasks.engine.recorded import initial_weights, read_recorded

RTOL = 1e-4  # an export agrees with eager PyTorch to float32 rounding (as in test_export.py)
OWN_KEYS = ("format", "format_version", "model", "model_kwargs", "library_version", "pretrained_cfg")


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """A copy of the shared digits run whose best weights matter (tests/model_weights.py): every involution moves
    the output, so a command that loaded the wrong weights or model cannot pass. Its metadata is the run's own."""
    run = tmp_path_factory.mktemp("run-dirs") / "digits"
    shutil.copytree(trained_run, run)
    best = run / "checkpoints" / "best.safetensors"
    model, _ = load_classifier(best)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    weights_matter(model, 3, run=lambda m: m(x))
    metadata = {k: v for k, v in read_checkpoint(best)[1].items() if k not in OWN_KEYS}
    save_checkpoint(model, best, metadata=metadata)
    return run


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from PIL import Image
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("images") / "digit0.png"
    Image.fromarray((load_digits().images[0] * 255 / 16).astype(np.uint8)).save(path)
    return path


def _fails_with_one_line(capsys, argv, *needles) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_the_recorded_run_is_read_once_for_every_command(run):
    found = read_recorded(run)
    assert found.path == run / "checkpoints" / "best.safetensors" and found.run_dir == run
    assert found.recorded and found.model == "rednet26_small" and found.num_classes == 10
    assert found.model_kwargs["width"] == 0.125 and found.input_size() == (1, 8, 8)
    assert found.data() == ("digits", None)
    state = read_recorded(run / "checkpoints" / "last.pt")  # the training state records the same
    assert (state.model, state.num_classes, state.input_size(), state.data()) == ("rednet26_small", 10, (1, 8, 8),
                                                                                 ("digits", None))
    assert initial_weights(run) == found.path  # a train command's --checkpoint RUN_DIR: its best weights


def test_a_file_that_records_nothing_takes_the_given_model(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(create_model("rednet26_small", num_classes=4).state_dict(), plain)
    found = read_recorded(plain, "rednet26_small", num_classes=4)
    assert not found.recorded and found.model == "rednet26_small" and found.model_kwargs == {"num_classes": 4}
    assert found.data() == (None, None) and found.input_size() is None
    assert found.build().num_classes == 4
    with pytest.raises(ValueError, match="does not record its architecture: pass --model"):
        read_recorded(plain).build()


def test_eval_takes_the_run_directory_and_its_recorded_data(run, capsys):
    assert main(["eval", "--checkpoint", str(run), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("digits test split, 360 images: top-1")
    report = json.loads((run / "eval-digits.json").read_text())
    assert report["count"] == 360 and report["checkpoint"] == str(run / "checkpoints" / "best.safetensors")


def test_eval_of_a_file_without_a_recorded_data_set_asks_for_data(tmp_path, capsys):
    plain = tmp_path / "plain.pth"
    torch.save(create_model("rednet26_small", num_classes=10, in_chans=1).state_dict(), plain)
    _fails_with_one_line(capsys, ["eval", "--checkpoint", plain, "--model", "rednet26_small"],
                         str(plain), "records no data set: pass --data")


def test_predict_takes_the_run_directory(run, digit_png, capsys):
    assert main(["predict", "--checkpoint", str(run), "--topk", "1", str(digit_png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    model, spec = load_classifier(run)
    from PIL import Image

    with torch.no_grad():
        logits = model(build_image_transform(spec)(Image.open(digit_png)).unsqueeze(0))
    assert lines[0] == str(digit_png) and lines[1].split()[-1] == spec.classes[int(logits.argmax())]


def test_visualize_takes_the_run_directory(run, digit_png, capsys):
    assert main(["visualize", "--checkpoint", str(run), "--layer", "list"]) == 0
    assert "layer1.0.conv2" in capsys.readouterr().out
    assert main(["visualize", "--checkpoint", str(run), str(digit_png)]) == 0
    picture = capsys.readouterr().out.splitlines()[-1].removeprefix("wrote ")
    assert picture.startswith(str(run)) and (run / picture[len(str(run)) + 1:]).stat().st_size > 1000


def test_export_takes_the_run_directory_alone_at_its_image_size(run, tmp_path, capsys):
    from backend_requirements import require_or_skip

    require_or_skip("onnx")
    require_or_skip("onnxscript")
    require_or_skip("onnxruntime")
    from involution.tasks.deploy import onnx_session

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on input (2, 1, 8, 8)" in printed and "onnxruntime vs eager" in printed
    # the file against the run's own model at the run's image size (another batch than the example's)
    model, _ = load_classifier(run)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    session = onnx_session(out)
    assert [d if isinstance(d, int) else "N" for d in session.get_inputs()[0].shape] == ["N", 1, 8, 8]
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    assert got.shape == (3, 10)
    assert (got - want).abs().max() <= RTOL * want.abs().max()
    assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL)


def test_export_builds_the_recorded_model_from_the_training_state(run):
    last = run / "checkpoints" / "last.pt"
    model = load_export_model(None, checkpoint=last)
    assert not model.training and model.num_classes == 10 and model.pretrained_cfg["input_size"] == (1, 8, 8)
    state = torch.load(last, weights_only=True)["model"]
    torch.testing.assert_close(model.state_dict(), state)


def test_convert_writes_a_runs_weights_with_its_record(run, tmp_path, capsys):
    for source, name in ((run, "best.safetensors"), (run / "checkpoints" / "last.pt", "last.pt")):
        dst = tmp_path / f"from-{name}.safetensors"
        assert main(["convert", str(source), str(dst)]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {dst}"
        converted, original = read_recorded(dst), read_recorded(run / "checkpoints" / name)
        assert (converted.model, converted.model_kwargs, converted.input_size(), converted.data()) == (
            original.model, original.model_kwargs, original.input_size(), original.data())
        torch.testing.assert_close(converted.build().state_dict(), original.build().state_dict())
    _fails_with_one_line(capsys, ["convert", run, run / "checkpoints" / "best.safetensors"], "same file")


def test_summary_takes_the_run_directory_at_its_image_size(run, capsys):
    assert main(["summary", "--checkpoint", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rednet26_small, input (1, 1, 8, 8)"
    total = next(line for line in lines if line.startswith("total")).split()[1]
    assert int(total.replace(",", "")) == count_params(load_classifier(run)[0])


def test_summary_takes_model_kwargs_and_an_input_size(capsys):
    assert main(["summary", "rednet26_small", "--model-kwargs", "width=0.25", "--input-size", "8", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rednet26_small, input (1, 3, 8, 8)"
    total = next(line for line in lines if line.startswith("total")).split()[1]
    assert int(total.replace(",", "")) == count_params(create_model("rednet26_small", width=0.25))
    assert next(line for line in lines if line.startswith("layer4")).split()[-1] == "512x1x1"  # 2048 channels x width
    _fails_with_one_line(capsys, ["summary", "rednet26_small", "--input-size", "1", "8", "8"],
                         "rednet26_small takes 3 input channel(s), not 1", "give H W, or C H W with C = 3")
    _fails_with_one_line(capsys, ["summary", "rednet26_small", "--input-size", "8"], "(H, W)")
    _fails_with_one_line(capsys, ["summary"], "MODEL name or --checkpoint")


@pytest.mark.parametrize("argv", [
    ["eval", "--no-progress"], ["predict", "IMAGE"], ["visualize", "--layer", "list"], ["export", "--out", "OUT"],
    ["summary"], ["convert-to", "OUT"],
], ids=lambda argv: argv[0])
def test_a_model_contradicting_the_run_is_refused(run, digit_png, tmp_path, capsys, argv):
    argv = [str(digit_png) if a == "IMAGE" else str(tmp_path / "m.onnx") if a == "OUT" else a for a in argv]
    if argv[0] == "convert-to":
        argv = ["convert", str(run), str(tmp_path / "m.safetensors"), "--model", "resnet26_small"]
    else:
        argv = [argv[0], "--checkpoint", str(run), "--model", "resnet26_small", *argv[1:]]
    _fails_with_one_line(capsys, argv, "--model resnet26_small contradicts", "records model rednet26_small",
                         "leave --model out")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.safetensors").exists()


def test_a_class_count_or_argument_contradicting_the_run_is_refused(run, tmp_path, capsys):
    _fails_with_one_line(capsys, ["export", "--checkpoint", run, "--num-classes", "5", "--out", tmp_path / "m.onnx"],
                         "--num-classes 5 contradicts", "num_classes=10")
    _fails_with_one_line(capsys, ["summary", "--checkpoint", run, "--model-kwargs", "width=0.5"],
                         "--model-kwargs width=0.5 contradicts", "width=0.125")
    # the same model named again is no contradiction
    assert main(["summary", "rednet26_small", "--checkpoint", str(run)]) == 0


def test_a_relative_data_dir_is_found_from_where_the_run_started(tmp_path, monkeypatch):
    from involution.tasks.engine.recorded import RecordedCheckpoint

    run, started = tmp_path / "project" / "runs" / "a", tmp_path / "project"
    (run / "checkpoints").mkdir(parents=True)
    (started / "data").mkdir()
    (run / "provenance.json").write_text(json.dumps({"cwd": str(started)}))
    found = RecordedCheckpoint(run / "checkpoints" / "best.safetensors", "rednet26_small", {}, recorded=True,
                               train_config={"data": "fashion-mnist", "data_dir": "data"})
    monkeypatch.chdir(tmp_path)  # elsewhere: "data" is not here
    assert found.data() == ("fashion-mnist", str(started / "data"))
    (tmp_path / "data").mkdir()  # a "data" here is the one meant
    assert found.data() == ("fashion-mnist", "data")
