import importlib.util
import subprocess
import sys

import pytest
from backend_requirements import optional_deps_required

from involution.cli import main


def test_models_lists_registry_names(capsys):
    assert main(["models", "rednet*"]) == 0
    names = capsys.readouterr().out.split()
    assert "rednet50" in names and "rednet26_small" in names and "resnet50" not in names


def test_info_checks_backends_and_times(capsys):
    assert main(["info", "--batch", "1", "--channels", "32", "--size", "12", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "backend torch" in out and "Involution2d layer" in out
    if importlib.util.find_spec("onnxruntime") is not None or optional_deps_required():
        assert "onnxruntime custom-op library: " in out


def test_convert_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and "Traceback" not in err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "involution", "models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "rednet26" in done.stdout


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_summary_counts_the_involution_op(capsys):
    assert main(["summary", "rednet26"]) == 0
    out = capsys.readouterr().out
    assert "9,233,166" in out and "involution.involution2d" in out
