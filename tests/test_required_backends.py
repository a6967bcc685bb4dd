"""CI cannot pass without the compiled pieces it promises (see tests/conftest.py: INVOLUTION_REQUIRE_BACKENDS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend_requirements import PROMISED, required_backends
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
        from involution.ops import onnxruntime_library

        reason = onnxruntime_library.unavailable_reason()
        if reason is not None:
            pytest.fail(f"the onnxruntime custom-op library is required but unavailable: {reason}", pytrace=False)


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
