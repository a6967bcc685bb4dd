"""The package type-checks: mypy, with the project's configuration ([tool.mypy] in pyproject.toml, which names the
files to check), finds no error in src/involution. mypy is a test dependency (the ``test`` extra): without it the
test skips outside CI and fails under CI (``backend_requirements.require_or_skip``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from backend_requirements import require_or_skip

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_clean_on_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    api = require_or_skip("mypy.api")
    monkeypatch.chdir(ROOT)  # the configuration's paths (files, mypy_path) are relative to the repository root
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    assert status == 0, f"mypy found errors in src/involution (exit status {status}):\n{stdout}{stderr}"
