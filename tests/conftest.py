"""Shared fixtures: the backends that can run CPU tensors here, the onnxruntime custom-op library and the OpenVINO
extension.

The compiled pieces build on first use and, where they cannot, the package falls back (the op to pure PyTorch) and
their tests skip. In CI that would hide a broken build behind a green run, so there the promised pieces are
required: ``INVOLUTION_REQUIRE_BACKENDS`` (comma-separated: ``cpu``, ``onnxruntime``, ``openvino``; default all
when ``CI`` is set, none otherwise) turns their absence into failures that print the build error, and the op's
fallback warning into an error. Likewise the optional test dependencies (onnx, onnxscript, onnxruntime, timm,
triton): every test module takes them through ``backend_requirements.require_or_skip``, which skips without them
outside CI and fails under CI (``INVOLUTION_REQUIRE_TEST_DEPS`` overrides).
"""

from __future__ import annotations

import pytest
from backend_requirements import optional_deps_required, required_backends
from op_helpers import CPU_BACKENDS


def pytest_configure(config) -> None:
    if "cpu" in required_backends():  # the pure-PyTorch fallback must never run unnoticed
        config.addinivalue_line("filterwarnings", "error:involution. the fast:UserWarning")


def pytest_report_header(config) -> str:
    required = required_backends()
    deps = "required" if optional_deps_required() else "may skip"
    return (f"involution CPU backends under test: {CPU_BACKENDS}; required: {', '.join(required) or 'none'} "
            f"(INVOLUTION_REQUIRE_BACKENDS); optional test dependencies: {deps} (CI, INVOLUTION_REQUIRE_TEST_DEPS)")


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
        message = f"the onnxruntime custom-op library cannot be built here: {reason}"
        if "onnxruntime" in required_backends():
            pytest.fail(message + " (required: INVOLUTION_REQUIRE_BACKENDS / CI)", pytrace=False)
        pytest.skip(message)
    return onnxruntime_library.library_path()


@pytest.fixture(scope="session")
def ov_library():
    """The path of the OpenVINO extension, built here; skips, saying why, where it cannot be built (openvino not
    installed among them), and fails instead where it is required (INVOLUTION_REQUIRE_BACKENDS / CI)."""
    from involution.ops import openvino_library

    reason = openvino_library.unavailable_reason()
    if reason is not None:
        if "openvino" in required_backends():
            pytest.fail(f"{reason} (required: INVOLUTION_REQUIRE_BACKENDS / CI)", pytrace=False)
        pytest.skip(reason)
    return openvino_library.library_path()
