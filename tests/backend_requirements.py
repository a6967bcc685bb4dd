"""Which compiled pieces a test run must have (see tests/conftest.py); a module of its own so that tests import it
by a unique name (every test folder has a ``conftest``)."""

from __future__ import annotations

import os

import pytest

#: The compiled pieces a run must have: the C++ "cpu" backend of the op, the onnxruntime custom-op library, the
#: OpenVINO extension (which needs the openvino package of the test extra).
PROMISED = ("cpu", "onnxruntime", "openvino")


def required_backends() -> tuple[str, ...]:
    default = ",".join(PROMISED) if os.environ.get("CI", "") not in ("", "0", "false") else ""
    names = tuple(n.strip() for n in os.environ.get("INVOLUTION_REQUIRE_BACKENDS", default).split(",") if n.strip())
    unknown = set(names) - set(PROMISED)
    if unknown:
        raise pytest.UsageError(f"INVOLUTION_REQUIRE_BACKENDS names {sorted(unknown)}; known: {', '.join(PROMISED)}")
    return names
