"""What a test run must have (see tests/conftest.py): the compiled pieces, and the optional test dependencies; a
module of its own so that tests import it by a unique name (every test folder has a ``conftest``).

Outside CI, a test that needs something this machine lacks skips and says why. Under CI (``CI`` set) nothing may
be missing: a skip there would turn a broken build or a broken ``.[test]`` install into a green run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

#: The compiled pieces a run must have: the C++ "cpu" backend of the op, the onnxruntime custom-op library, the
#: OpenVINO extension (which needs the openvino package of the test extra).
PROMISED = ("cpu", "onnxruntime", "openvino")
#: Set to 1 (or 0) to require the optional test dependencies (or not) whatever ``CI`` says.
REQUIRE_TEST_DEPS = "INVOLUTION_REQUIRE_TEST_DEPS"


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no")


def in_ci() -> bool:
    """Whether this run is CI's: the ``CI`` variable set (to anything but empty, 0 or false)."""
    return _flag(os.environ.get("CI", ""))


def required_backends() -> tuple[str, ...]:
    default = ",".join(PROMISED) if in_ci() else ""
    names = tuple(n.strip() for n in os.environ.get("INVOLUTION_REQUIRE_BACKENDS", default).split(",") if n.strip())
    unknown = set(names) - set(PROMISED)
    if unknown:
        raise pytest.UsageError(f"INVOLUTION_REQUIRE_BACKENDS names {sorted(unknown)}; known: {', '.join(PROMISED)}")
    return names


def optional_deps_required() -> bool:
    """Whether a missing optional test dependency (onnx, onnxscript, onnxruntime, timm, triton ...) fails the run:
    under CI, unless ``INVOLUTION_REQUIRE_TEST_DEPS`` says otherwise."""
    setting = os.environ.get(REQUIRE_TEST_DEPS)
    return in_ci() if setting is None else _flag(setting)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test (or, at a module's top, the module) saying ``reason``; fail instead where the test
    dependencies are required (:func:`optional_deps_required`), which at a module's top fails the run."""
    if optional_deps_required():
        pytest.fail(f"{reason} (required under CI; {REQUIRE_TEST_DEPS}=0 lets it skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_or_skip(module: str) -> ModuleType:
    """``module`` imported, for a test (or a test module, at its top) that needs this optional test dependency:
    ``pytest.importorskip`` outside CI, a failure naming the module and the import error under CI."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        skip_or_fail(f"the test dependency {module!r} cannot be imported ({exc}): pip install -e '.[test]'")
