"""CI cannot pass without the compiled pieces it promises (see tests/conftest.py: INVOLUTION_REQUIRE_BACKENDS), nor
without the optional test dependencies (backend_requirements.require_or_skip)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from backend_requirements import PROMISED, REQUIRE_TEST_DEPS, optional_deps_required, require_or_skip, required_backends

from involution.ops import backend_status


@pytest.mark.parametrize("name", PROMISED)
def test_required_backend_is_built(name) -> None:
    if name not in required_backends():
        pytest.skip(f"'{name}' is not required here (set CI or INVOLUTION_REQUIRE_BACKENDS={name} to require it)")
    if name == "cpu":
        status = backend_status()["cpu"]
        if status != "available":
            pytest.fail(f"the C++ 'cpu' backend is required but did not build: {status}", pytrace=False)
    else:
        from involution.ops import onnxruntime_library, openvino_library

        library, what = {"onnxruntime": (onnxruntime_library, "the onnxruntime custom-op library"),
                         "openvino": (openvino_library, "the OpenVINO extension")}[name]
        reason = library.unavailable_reason()
        if reason is not None:
            pytest.fail(f"{what} is required but unavailable: {reason}", pytrace=False)


def test_a_missing_required_backend_fails_the_run(tmp_path) -> None:
    """With the C++ extension disabled and the backend required, a test run fails, naming the reason."""
    env = {**os.environ, "INVOLUTION_DISABLE_CPU_EXT": "1", "INVOLUTION_REQUIRE_BACKENDS": "cpu"}
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={here.parent}",
         str(here / "test_required_backends.py"), "-k", "is_built and cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert "disabled by INVOLUTION_DISABLE_CPU_EXT" in done.stdout, done.stdout[-2000:]


def test_a_missing_openvino_fails_a_ci_run(tmp_path) -> None:
    """Under CI, openvino not installed (hidden here by a plugin) fails the run instead of skipping its tests."""
    (tmp_path / "hide_openvino.py").write_text(
        "import importlib.util\n"
        "_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *args: None if name == 'openvino' else _find(name, *args)\n"
    )
    env = {**os.environ, "CI": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "hide_openvino",
         f"--rootdir={here.parent}", str(here / "test_required_backends.py"), "-k", "is_built and openvino"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert "'openvino' package is not installed: pip install 'involution[openvino]'" in done.stdout, done.stdout[-2000:]


MISSING = "involution_no_such_test_dependency"


@pytest.mark.parametrize("ci, override, required", [
    ("", None, False), ("1", None, True), ("true", "0", False), ("", "1", True), ("false", None, False),
])
def test_optional_test_dependencies_are_required_under_ci(monkeypatch, ci, override, required) -> None:
    monkeypatch.setenv("CI", ci)
    if override is None:
        monkeypatch.delenv(REQUIRE_TEST_DEPS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_TEST_DEPS, override)
    assert optional_deps_required() is required
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match=rf"test dependency '{MISSING}' cannot be imported"):
        require_or_skip(MISSING)
    assert require_or_skip("json").__name__ == "json"  # what is installed is simply imported


@pytest.mark.parametrize("ci", ["", "1"])
def test_a_test_module_missing_a_dependency_skips_or_fails_the_run(tmp_path, ci) -> None:
    """At a module's top, as the ONNX, timm and Triton test modules use it: outside CI the module skips (the run
    passes), under CI the run fails, naming the module."""
    (tmp_path / "test_needs_it.py").write_text(
        f"from backend_requirements import require_or_skip\n\nrequire_or_skip({MISSING!r})\n\n\n"
        "def test_something():\n    pass\n")
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")  # the rest of the suite
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(Path(__file__).parent)}
    env.pop(REQUIRE_TEST_DEPS, None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert MISSING in done.stdout, done.stdout[-2000:]
    if ci:
        assert done.returncode == pytest.ExitCode.INTERRUPTED and "required under CI" in done.stdout, done.stdout[-2000:]
    else:
        assert done.returncode == 0 and "1 passed, 1 skipped" in done.stdout, done.stdout[-2000:]
