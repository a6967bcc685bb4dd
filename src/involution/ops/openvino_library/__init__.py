"""The OpenVINO extension for involution (``ops/csrc/involution_ov.cpp``): build, load.

The extension adds the operations ``Involution2d`` and ``Involution3d`` (opset ``involution``) to OpenVINO and maps
the ONNX custom nodes ``involution::Involution2d`` / ``Involution3d`` (what ``export_model(..., onnx_ops="custom")``
writes) to them, so that with it loaded
OpenVINO reads such an ONNX file, or an IR (``.xml``) holding the op, and runs it on the CPU::

    import openvino as ov
    from involution.ops import openvino_library
    core = openvino_library.add_extension(ov.Core())
    compiled = core.compile_model(core.read_model("rednet50.xml"), "CPU")

(or, without this package: ``core.add_extension(path)`` with the ``.so`` that :func:`library_path` builds; it needs
only OpenVINO, not PyTorch.) :func:`involution.tasks.deploy.openvino_model` does this for a file.

Building needs g++ and the ``openvino`` wheel from PyPI, which ships OpenVINO's C++ headers and libraries
(:mod:`.build`). The cache is ``$INVOLUTION_CACHE/openvino`` (default ``~/.cache/involution/openvino``).
"""

from __future__ import annotations

from typing import Any

from .._runtime_build import build_status, why_unavailable
from ..onnxruntime_library import DOMAIN, OP_TYPE, OP_TYPE_3D
from .build import INSTALL_HINT, cache_dir, find_openvino, library_path, require_openvino, target

__all__ = [
    "DOMAIN",
    "INSTALL_HINT",
    "OP_TYPE",
    "OP_TYPE_3D",
    "add_extension",
    "cache_dir",
    "find_openvino",
    "is_available",
    "library_path",
    "status",
    "unavailable_reason",
]


def unavailable_reason() -> str | None:
    """None if the extension can be built (or is), else why not."""
    return why_unavailable(library_path)


def is_available() -> bool:
    """Whether the extension can be built and loaded here."""
    return unavailable_reason() is None


def status() -> str:
    """One line on the extension's state, without building it: built (where), buildable, or why not."""
    try:
        install = require_openvino()
    except RuntimeError as exc:
        return f"unavailable: {exc}"
    return build_status(target(install.key()), f"openvino in {install.root}")


def add_extension(core: Any) -> Any:
    """Load the extension (built on first use) into the ``openvino.Core`` ``core``; returns ``core``.

    Raises:
        RuntimeError: the extension cannot be built (see :func:`library_path`).
    """
    core.add_extension(str(library_path()))
    return core
