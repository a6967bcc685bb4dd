"""Clumsy and hostile files (issue 21): every command that reads a checkpoint refuses a file that is not one with
a one-line message naming it; failed writes name the file and the cause and leave no temporary file; the training
state never records weights that are not on disk; a destination equal to its source is refused."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch
from conftest import tiny

from involution import _atomic
from involution.cli import main
from involution.models import create_model, load_model, ours_to_official, save_checkpoint
from involution.models import read_safetensors
from involution.tasks.classification import NonFiniteLossError, predict, resume_config, train
from involution.tasks.engine.state import load_training_state, save_training_state

SMALL = {"num_classes": 10, "width": 0.125}


def not_a_checkpoint(path, kind: str):
    """Write a file that no reader should accept: text, random bytes, or a zip that is not a torch archive."""
    if kind == "text":
        path.write_text("a note\n")
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(1000))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hello")
    return path


def official_file(path):
    """A small official mmcls-layout checkpoint, which ``convert`` reads."""
    torch.save({"state_dict": ours_to_official(create_model("rednet26_small", **SMALL).state_dict())}, path)
    return path


def one_line_error(capsys, argv, path) -> str:
    """Run the CLI; it must fail with one line on stderr that names ``path``, and no traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)  # the CLI's exit code for a user error
    assert str(path) in err and "Traceback" not in err and "weights_only" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# -- reading ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "random", "zip"])
def test_convert_refuses_a_file_that_is_no_checkpoint(tmp_path, capsys, kind):
    src = not_a_checkpoint(tmp_path / "note.pth", kind)
    err = one_line_error(capsys, ["convert", src, tmp_path / "o.safetensors"], src)
    assert "not a PyTorch, safetensors or PaddlePaddle checkpoint" in err or "truncated or corrupt" in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("command", ["predict", "eval", "visualize", "export"])
def test_commands_refuse_a_file_that_is_no_checkpoint(tmp_path, capsys, command):
    src = not_a_checkpoint(tmp_path / "note.pth", "text")
    argv = {
        "predict": ["predict", "--checkpoint", src, "--model", "rednet26_small", tmp_path / "img.png"],
        "eval": ["eval", "--checkpoint", src, "--model", "rednet26_small", "--data", "digits", "--no-progress"],
        "visualize": ["visualize", "--checkpoint", src, "--model", "rednet26_small", "--layer", "list"],
        "export": ["export", "--model", "rednet26_small", "--checkpoint", src, "--out", tmp_path / "m.onnx"],
    }[command]
    one_line_error(capsys, argv, src)


def test_a_random_last_pt_is_refused_by_predict_and_resume(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    last = not_a_checkpoint(tmp_path / "checkpoints" / "last.pt", "random")
    with pytest.raises(ValueError, match="last.pt") as info:
        load_training_state(last)
    assert "weights_only" not in str(info.value)
    one_line_error(capsys, ["predict", "--checkpoint", last, tmp_path / "img.png"], last)
    # --resume of a run directory whose last.pt is random bytes
    (tmp_path / "config.json").write_text(json.dumps(tiny().to_dict()))
    one_line_error(capsys, ["train", "--resume", "--out", tmp_path, "--no-progress"], last)


def test_train_refuses_an_initial_checkpoint_that_is_no_checkpoint(tmp_path, capsys):
    src = not_a_checkpoint(tmp_path / "init.pth", "text")
    argv = ["train", "--model-kwargs", "width=0.125", "--train-fraction", "0.1", "--checkpoint", src,
            "--out", tmp_path / "run", "--no-progress"]
    one_line_error(capsys, argv, src)


def test_a_training_checkpoint_without_its_entries_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "involution-train", "format_version": 1}, path)
    with pytest.raises(ValueError, match=r"last.pt.*model_name"):
        load_training_state(path)


def test_resume_reports_a_damaged_config_json_with_its_path(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2")
    one_line_error(capsys, ["train", "--resume", "--out", tmp_path, "--no-progress"], tmp_path / "config.json")


# -- writing ------------------------------------------------------------------------------------------------------


def _no_temporary_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_a_destination_under_a_file_is_named_as_not_a_directory(tmp_path):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    model = create_model("rednet26_small", **SMALL)
    with pytest.raises(OSError, match=r"plain-file.*not a directory") as info:
        save_checkpoint(model, blocker / "m.safetensors")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(OSError, match=r"plain-file.*not a directory"):
        save_training_state(blocker / "sub" / "last.pt", {"x": 1})
    assert _no_temporary_files(tmp_path)


def test_convert_into_a_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    src = official_file(tmp_path / "official.pth")
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    err = one_line_error(capsys, ["convert", src, blocker / "o.safetensors"], blocker)
    assert "not a directory" in err


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_a_failed_safetensors_write_names_the_file_and_cause(tmp_path, monkeypatch, code, cause):
    from safetensors import SafetensorError

    import involution.models._safetensors as st

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a partial file, as a real failure leaves
            f.write(b"partial")
        raise SafetensorError(f"Error while serializing: I/O error: {errno.errorcode[code]} (os error {code})")

    monkeypatch.setattr(st, "save_file", failing_save_file)
    target = tmp_path / "m.safetensors"
    with pytest.raises(OSError, match=rf"m.safetensors.*{cause}") as info:
        save_checkpoint(create_model("rednet26_small", **SMALL), target)
    assert info.value.errno == code
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_torch_disk_full_message_is_translated(tmp_path, monkeypatch):
    """torch's disk-full error ("enforce fail ... unexpected pos") names neither file nor cause: the writer does."""
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(_atomic, "_free_bytes", lambda folder: 0, raising=False)  # what a full disk shows
    with pytest.raises(OSError, match=r"last.pt.*disk is full") as info:
        save_training_state(tmp_path / "last.pt", {"x": torch.zeros(3)})
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_destination_is_named(tmp_path, monkeypatch):
    def read_only_replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(src), None, str(dst))

    monkeypatch.setattr(_atomic.os, "replace", read_only_replace)
    with pytest.raises(OSError, match=r"config.json.*read-only"):
        _atomic.write_text_atomic(tmp_path / "config.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_write_error_in_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import involution.models._safetensors as st

    def full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    src = official_file(tmp_path / "official.pth")
    monkeypatch.setattr(st, "save_file", full)
    err = one_line_error(capsys, ["convert", src, tmp_path / "o.safetensors"], tmp_path / "o.safetensors")
    assert "disk is full" in err and _no_temporary_files(tmp_path)


# -- destination equal to the source --------------------------------------------------------------------------------


def test_convert_refuses_to_overwrite_its_source(tmp_path, capsys):
    src = official_file(tmp_path / "official.pth")
    before = src.read_bytes()
    (tmp_path / "link.pth").symlink_to(src)
    for dst in (src, tmp_path / "." / "official.pth", tmp_path / "link.pth"):
        err = one_line_error(capsys, ["convert", src, dst], src)
        assert "same file" in err
    assert src.read_bytes() == before


# -- training state and best weights ------------------------------------------------------------------------------


def quick(**overrides):
    """A run of 2 steps per epoch (a tenth of digits' training split)."""
    return tiny(train_fraction=0.1, **overrides)


def test_best_weights_are_on_disk_before_last_pt_records_them(tmp_path, monkeypatch):
    """A crash while writing best.safetensors must not leave a last.pt that records the new best."""
    from involution.tasks.engine.checkpoints import RunCheckpoints

    def crash(self, name, extra):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunCheckpoints, "save_weights", crash)
    run = tmp_path / "run"
    with pytest.raises(OSError):
        train(quick(epochs=1), out=run, progress=False, quiet=True)
    last = run / "checkpoints" / "last.pt"
    assert not last.exists() or load_training_state(last)["best_epoch"] == -1


def test_resume_rewrites_best_weights_that_last_pt_records_but_are_missing(tmp_path):
    """A run that crashed between last.pt and best.safetensors (as older versions wrote them) is repaired."""
    run = tmp_path / "run"
    train(quick(epochs=1), out=run, progress=False, quiet=True)
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["best_epoch"] == 1
    (run / "checkpoints" / "best.safetensors").unlink()
    result = train(resume_config(run), out=run, resume=True, progress=False, quiet=True)  # nothing left to train
    assert result.metrics["best_epoch"] == 1
    tensors, meta = read_safetensors(run / "checkpoints" / "best.safetensors")
    assert json.loads(meta["epoch"]) == 1 and json.loads(meta["val_acc"]) == state["best"]
    for key, value in state["model"].items():  # the weights last.pt recorded at the end of epoch 1
        assert torch.equal(tensors[key], value), key


def test_resume_without_the_recorded_best_says_so(tmp_path, capsys):
    """Weights last.pt cannot rebuild (it moved on since): resume says so and picks the best again."""
    run = tmp_path / "run"
    train(quick(epochs=1), out=run, progress=False, quiet=True)
    last = run / "checkpoints" / "last.pt"
    state = load_training_state(last)
    state["epoch"] = 1
    state["step_in_epoch"] = 1  # the model in last.pt is no longer that of the best epoch
    state.pop("format"), state.pop("format_version")
    save_training_state(last, state)
    (run / "checkpoints" / "best.safetensors").unlink()
    with pytest.warns(UserWarning, match=r"best.safetensors.*missing.*epoch 1"):
        result = train(resume_config(run, {"epochs": 2}), out=run, resume=True, progress=False, quiet=True)
    assert result.metrics["best_epoch"] == 2
    _, meta = read_safetensors(run / "checkpoints" / "best.safetensors")
    assert json.loads(meta["epoch"]) == 2


def test_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch):
    import involution.tasks.classification.task as train_module

    class NaNLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", NaNLoss)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train(quick(), out=run, progress=False, quiet=True)
    assert not (run / "checkpoints" / "last.pt").exists()
    assert "last.pt" not in str(info.value) and "no checkpoint" in str(info.value)


def test_an_error_about_another_file_is_not_called_a_write_failure(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-compiler") as info, \
            _atomic.atomic_path(tmp_path / "lib.so") as tmp:
        import subprocess

        subprocess.run(["no-such-compiler", "-o", str(tmp)], check=False)
    assert not isinstance(info.value, _atomic.WriteError) and list(tmp_path.iterdir()) == []


# -- hostile metadata (issue 26) ------------------------------------------------------------------------------------

DIGITS_SPEC = {"dataset": "digits", "classes": [str(i) for i in range(10)], "in_chans": 1, "image_size": 8,
               "mean": [0.3], "std": [0.37], "eval_resize": None}


def digits_checkpoint(path, spec_entries=None, raw_spec=None, weights=None):
    """A 1-channel 10-class model's safetensors file whose data_spec has ``spec_entries`` replaced (or is
    ``raw_spec`` as it is); ``weights(model)`` may change the weights first."""
    model = create_model("rednet26_small", num_classes=10, in_chans=1, width=0.125)
    if weights is not None:
        with torch.no_grad():
            weights(model)
    spec = raw_spec if raw_spec is not None else json.dumps({**DIGITS_SPEC, **(spec_entries or {})})
    return save_checkpoint(model, path, {"data_spec": spec})


def digit_png(path):
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(path)
    return path


@pytest.mark.parametrize(
    "entries, field",
    [
        ({"image_size": 100000}, "data_spec.image_size must be an integer >= 1 and <= 8192, got 100000"),
        ({"image_size": 0}, "data_spec.image_size"),
        ({"eval_resize": 10**6}, "data_spec.eval_resize"),
        ({"std": [0]}, "data_spec.std[0] must be a finite number > 0, got 0"),
        ({"std": [float("nan")]}, "data_spec.std[0]"),
        ({"mean": [float("inf")]}, "data_spec.mean[0]"),
        ({"mean": [0.5, 0.5, 0.5]}, "data_spec.mean has 3 values but the model takes 1 input channel"),
        ({"std": []}, "data_spec.std has 0 values"),
        ({"in_chans": 3}, "data_spec.in_chans is 3 but the model takes 1"),
        ({"classes": ["a", "b", "c"]}, "data_spec.classes lists 3 classes but the model has 10 outputs"),
        ({"classes": "0123456789"}, "data_spec.classes must be a list"),
        ({"image_size": "8"}, "data_spec.image_size"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_hostile_data_spec_is_refused_naming_the_file_and_field(tmp_path, capsys, entries, field):
    path = digits_checkpoint(tmp_path / "model.safetensors", entries)
    err = one_line_error(capsys, ["predict", "--checkpoint", path, digit_png(tmp_path / "d.png")], path)
    assert field in err
    err = one_line_error(capsys, ["eval", "--checkpoint", path, "--data", "digits", "--no-progress"], path)
    assert field in err


@pytest.mark.parametrize("raw, message", [("{not json", "data_spec is not JSON"), ("[1, 2]", "JSON object"),
                                          ('{"classes": ["0"]}', "lacks in_chans, image_size, mean, std")])
def test_a_damaged_data_spec_is_refused_by_every_reader(tmp_path, raw, message):
    path = digits_checkpoint(tmp_path / "model.safetensors", raw_spec=raw)
    for read in (load_model, lambda p: create_model("rednet26_small", num_classes=10, in_chans=1, width=0.125,
                                                    checkpoint=p)):
        with pytest.raises(ValueError, match=message) as info:
            read(path)
        assert str(path) in str(info.value)


def test_a_huge_image_size_is_refused_before_anything_is_sized_from_it(tmp_path):
    """image_size 100000 once made predict allocate until a MemoryError (1e6: until the process was killed)."""
    path = digits_checkpoint(tmp_path / "model.safetensors", {"image_size": 100000})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"model.safetensors: data_spec.image_size"):
            predict(path, [digit_png(tmp_path / "d.png")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak


def _poison(model):
    model.layer2[0].conv1.weight[0, 0] = float("nan")
    model.fc.bias[3] = float("inf")


def test_a_checkpoint_of_nan_weights_is_refused_by_predict_and_eval(tmp_path, capsys):
    path = digits_checkpoint(tmp_path / "model.safetensors", weights=_poison)
    png = digit_png(tmp_path / "d.png")
    for argv in (["predict", "--checkpoint", path, png],
                 ["eval", "--checkpoint", path, "--data", "digits", "--no-progress"]):
        err = one_line_error(capsys, argv, path)
        assert "NaN or infinite values in 2 tensor(s)" in err and "layer2.0.conv1.weight" in err and "fc.bias" in err
    plain = tmp_path / "plain.pth"  # a foreign file read with --model
    torch.save(read_safetensors(path)[0], plain)
    err = one_line_error(capsys, ["predict", "--checkpoint", plain, "--model", "rednet26_small", png], plain)
    assert "NaN or infinite" in err


def test_a_training_state_of_nan_weights_is_refused(tmp_path, capsys):
    from involution.tasks.engine.state import REQUIRED_KEYS

    kwargs = {"num_classes": 10, "in_chans": 1, "width": 0.125}
    model = create_model("rednet26_small", **kwargs).state_dict()
    model["fc.weight"][0, 0] = float("nan")
    state = {**dict.fromkeys(REQUIRED_KEYS, 0), "model_name": "rednet26_small", "model_kwargs": kwargs,
             "model": model, "data_spec": json.dumps(DIGITS_SPEC)}
    last = save_training_state(tmp_path / "checkpoints" / "last.pt", state)
    err = one_line_error(capsys, ["predict", "--checkpoint", last, digit_png(tmp_path / "d.png")], last)
    assert "fc.weight" in err


# -- file modes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        written = [save_checkpoint(create_model("rednet26_small", **SMALL), tmp_path / "m.safetensors"),
                   _atomic.write_text_atomic(tmp_path / "config.json", "{}")]
        save_training_state(tmp_path / "last.pt", {"x": torch.zeros(2)})
        written.append(tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        p.name: oct(0o666 & ~umask) for p in written}
