"""Shared fixtures: the backends that can run CPU tensors here, and the onnxruntime custom-op library."""

from __future__ import annotations

import pytest

from op_helpers import CPU_BACKENDS


def pytest_report_header(config) -> str:
    return f"involution CPU backends under test: {CPU_BACKENDS}"


@pytest.fixture(params=CPU_BACKENDS, scope="session")
def backend(request) -> str:
    """The name of one CPU-capable backend; tests run their op calls inside ``use_backend(backend)``.

    Session-scoped so that it combines with hypothesis's ``@given`` (no function-scoped fixture health check).
    """
    return request.param


@pytest.fixture(scope="session")
def ort_library():
    """The path of the onnxruntime custom-op library, built here; skips, saying why, where it cannot be built."""
    from involution.ops import onnxruntime_library

    reason = onnxruntime_library.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the onnxruntime custom-op library cannot be built here: {reason}")
    return onnxruntime_library.library_path()
