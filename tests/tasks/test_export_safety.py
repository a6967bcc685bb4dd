"""What `involution export` may write, and where (issue 26, defects 7 and 8): the format follows --out's extension,
an export never replaces a checkpoint (or any file but an earlier export of its format), and a destination that
cannot be written is one line naming it. Every refusal happens before the tracing: exit code 2, one line on stderr,
nothing written, the file at --out byte-identical."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from involution.cli import main
from involution.layers import Involution2d
from involution.tasks.deploy import export_model
from involution.tasks.deploy.destination import is_export

SMALL = ["export", "--model", "rednet26_small", "--input-size", "3", "16", "16"]


def refused(capsys, *args: str) -> str:
    """Run ``involution export`` with ``args``, assert the CLI's user-error convention, return the error line."""
    code = main([*SMALL, *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("involution export: error: "), lines
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _layer_export(path: Path) -> Path:
    """A quick export of a small involution layer at ``path`` (format from its extension), not checked."""
    return export_model(Involution2d(16, kernel_size=3), path, input_size=(16, 8, 8), verify=False)


# -- the format follows the extension ------------------------------------------------------------------------------


def test_pt2_without_format_writes_an_exported_program(tmp_path, capsys):
    """`--out a.pt2` without --format used to write ONNX (torch.export.load then failed with BadZipFile)."""
    out = tmp_path / "a.pt2"
    assert main([*SMALL, "--out", str(out), "--no-verify"]) == 0, capsys.readouterr().err
    assert is_export(out, "exported-program") and not is_export(out, "onnx")
    program = torch.export.load(str(out))
    assert program.module()(torch.randn(2, 3, 16, 16)).shape == (2, 1000)


def test_each_extension_names_its_format(tmp_path):
    onnx_file, program_file = _layer_export(tmp_path / "layer.onnx"), _layer_export(tmp_path / "layer.pt2")
    assert is_export(onnx_file, "onnx") and not zipfile.is_zipfile(onnx_file)
    assert is_export(program_file, "exported-program") and not is_export(program_file, "onnx")
    # an explicit --format that agrees with the extension, or names the format of an unknown one, is followed
    assert is_export(export_model(Involution2d(16, 3), tmp_path / "layer.bin", format="exported-program",
                                  input_size=(16, 8, 8), verify=False), "exported-program")


@pytest.mark.parametrize("name", ["model.bin", "model", "model.onnx.txt"])
def test_an_extension_that_names_no_format_is_refused(name, tmp_path, capsys):
    line = refused(capsys, "--out", str(tmp_path / name))
    assert str(tmp_path / name) in line and ".onnx (onnx)" in line and ".pt2 (exported-program)" in line, line
    assert "--format" in line and snapshot(tmp_path) == {}


@pytest.mark.parametrize("name, fmt", [("a.pt2", "onnx"), ("a.onnx", "exported-program"), ("a.PT2", "onnx")])
def test_a_format_that_contradicts_the_extension_is_refused(name, fmt, tmp_path, capsys):
    line = refused(capsys, "--out", str(tmp_path / name), "--format", fmt)
    assert str(tmp_path / name) in line and f"--format {fmt} contradicts the extension" in line, line
    assert snapshot(tmp_path) == {}


# -- no export over a checkpoint, nor over any file but an export of its format -----------------------------------


@pytest.mark.parametrize("target, fmt", [
    ("checkpoints/last.pt", None), ("checkpoints/last.pt", "onnx"), ("checkpoints/last.pt", "exported-program"),
    ("checkpoints/best.safetensors", "onnx"), ("checkpoints/last.safetensors", None),
])
def test_an_export_never_writes_over_a_runs_checkpoint(trained_run, target, fmt, capsys):
    """`--out RUN/checkpoints/last.pt` replaced the run's resume state with an ONNX file."""
    before = snapshot(trained_run)
    line = refused(capsys, "--out", str(trained_run / target), *(["--format", fmt] if fmt else []))
    assert str(trained_run / target) in line and "checkpoint" in line, line
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("suffix", [".pth", ".pdparams", ".ckpt", ".PT"])
def test_a_checkpoint_extension_is_refused_even_for_a_new_file(suffix, tmp_path, capsys):
    line = refused(capsys, "--out", str(tmp_path / f"model{suffix}"), "--format", "onnx")
    assert f"{suffix.lower()} is a checkpoint's extension" in line, line
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("name, content", [
    ("weights.onnx", "checkpoint"),  # a run's checkpoint under an export's name
    ("a.pt2", "onnx"),  # what the old default wrote at --out a.pt2
    ("a.onnx", "pt2"),
    ("notes.onnx", "text"),
])
def test_an_existing_file_other_than_an_export_of_the_format_is_kept(trained_run, name, content, tmp_path, capsys):
    out = tmp_path / name
    if content == "checkpoint":
        shutil.copyfile(trained_run / "checkpoints" / "last.pt", out)
    elif content == "text":
        out.write_text("the user's own notes\n")
    else:
        _layer_export(tmp_path / f"earlier.{content}").rename(out)
    before = snapshot(tmp_path)
    line = refused(capsys, "--out", str(out))
    assert f"--out {out} exists and is not an" in line and "remove the file or choose another --out" in line, line
    assert snapshot(tmp_path) == before


def test_an_earlier_export_of_the_same_format_is_replaced(tmp_path):
    """Each export builds a fresh layer (other random weights), so the second file differs from the first."""
    for name in ("layer.onnx", "layer.pt2"):
        first = _layer_export(tmp_path / name).read_bytes()
        assert _layer_export(tmp_path / name).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.onnx", "layer.pt2"]


# -- a destination that cannot be written: one line naming it ------------------------------------------------------


def test_out_below_a_regular_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("notes\n")
    out = tmp_path / "notes.txt" / "model.onnx"
    line = refused(capsys, "--out", str(out))
    assert f"could not write {out}: {tmp_path / 'notes.txt'} is a file, not a directory" in line, line
    assert snapshot(tmp_path) == {"notes.txt": b"notes\n"}


@pytest.fixture
def unwritable_folder(tmp_path):
    """An empty folder in which no file can be created: immutable (``chattr +i``) for root, whom permissions do not
    stop; mode 0555 for anyone else. Skips where neither is possible (root on a file system without attributes)."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True, check=False).returncode:
            pytest.skip("running as root on a file system where chattr +i is unavailable: no unwritable folder")
    else:
        folder.chmod(0o555)
    try:
        assert not os.access(folder, os.W_OK)
        yield folder
    finally:
        if as_root:
            subprocess.run([chattr, "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


@pytest.mark.parametrize("name", ["model.onnx", "model.pt2", "sub/model.pt2"])
def test_an_unwritable_folder_is_one_line_naming_out(unwritable_folder, name, capsys):
    """An export into an immutable folder said "[enforce fail at inline_container.cc:747]", naming no path."""
    out = unwritable_folder / name
    line = refused(capsys, "--out", str(out))
    assert f"could not write {out}: no files can be created in {unwritable_folder}" in line, line
    assert list(unwritable_folder.iterdir()) == []


@pytest.mark.parametrize("name", ["layer.onnx", "layer.pt2"])
def test_a_failed_write_after_the_tracing_names_out(unwritable_folder, name, monkeypatch):
    """Should the folder refuse the file only once the tracing is done (made read-only meanwhile), the writer's own
    error ("[Errno 1] ...: '.layer.1234.tmp.pt2'", "[enforce fail at inline_container.cc ...]") becomes one line
    naming --out."""
    from involution.tasks.deploy import destination

    monkeypatch.setattr(destination, "check_writable", lambda out: None)  # the folder passed the early check
    out = unwritable_folder / name
    with pytest.raises(OSError) as caught:
        _layer_export(out)
    message = str(caught.value)
    assert message.startswith(f"could not write {out}: ") and "\n" not in message and ".tmp" not in message, message
    assert list(unwritable_folder.iterdir()) == []
