"""The onnxruntime custom-operator library for involution (``ops/csrc/involution_ort.cpp``): headers, build, load.

An ONNX file exported with ``onnx_ops="custom"`` holds ``involution::Involution2d`` nodes (``Involution3d`` for 3-D
layers), which onnxruntime runs
once this library is registered with the session::

    from involution.ops.onnxruntime_library import session_options
    session = onnxruntime.InferenceSession("rednet50.onnx", session_options(), providers=["CPUExecutionProvider"])

(or, without this package: ``opts.register_custom_ops_library(path)`` with the ``.so`` that :func:`library_path`
builds; it needs only libstdc++ and onnxruntime, not PyTorch.)

Building needs g++ and onnxruntime's C/C++ API headers (:mod:`.headers`: where they are looked for, and
:func:`fetch_headers`, which downloads them); :mod:`.build` compiles and caches the library. The cache is
``$INVOLUTION_CACHE/onnxruntime`` (default ``~/.cache/involution/onnxruntime``).
"""

from __future__ import annotations

from typing import Any

from .._runtime_build import build_status, why_unavailable
from .build import build_key, library_path, target
from .headers import cache_dir, fetch_headers, find_headers

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "OP_TYPE_3D",
    "cache_dir",
    "fetch_headers",
    "find_headers",
    "is_available",
    "library_path",
    "session_options",
    "status",
    "unavailable_reason",
]

# The custom nodes' domain and types, as ops/csrc/involution_ort.cpp registers them.
DOMAIN = "involution"
OP_TYPE = "Involution2d"
OP_TYPE_3D = "Involution3d"


def unavailable_reason() -> str | None:
    """None if the library can be built (or is), else why not."""
    return why_unavailable(library_path)


def status() -> str:
    """One line on the library's state, without building it: built (where), buildable, or why not."""
    include = find_headers()
    if include is None:
        return "unavailable: no onnxruntime headers (involution onnxruntime fetch-headers)"
    return build_status(target(build_key(include)), f"headers in {include}")


def is_available() -> bool:
    """Whether the custom-op library can be built and loaded here."""
    return unavailable_reason() is None


def session_options(threads: int | None = None, register_library: bool = True) -> Any:
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads (default: onnxruntime's) and, unless
    ``register_library`` is False, the involution library registered (built on first use)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if register_library:
        opts.register_custom_ops_library(str(library_path()))
    return opts
