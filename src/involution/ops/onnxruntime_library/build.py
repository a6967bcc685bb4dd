"""Compiling the custom-op library (``ops/csrc/involution_ort.cpp``) with g++, once per source, headers and flags.

The library is built into ``<cache>/build/<hash>/`` (the hash covers ``involution_ort.cpp``, the NCHW kernels it
shares with the PyTorch extension, ``involution_nchw.h``, the flags and onnxruntime's C API header) and written
atomically: a concurrent or interrupted build never leaves a half-written ``.so`` behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from ..._atomic import atomic_path
from .._native import simd_flags
from .headers import cache_dir, require_headers

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCE = _CSRC / "involution_ort.cpp"
# The NCHW kernels it includes, shared with the PyTorch extension (backends/cpu.py).
_KERNELS = _CSRC / "involution_nchw.h"

_lock = threading.Lock()
_built: dict[str, Path] = {}
_errors: dict[str, str] = {}


def _flags() -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", *simd_flags()]


def build_key(include: Path) -> str:
    """The hash naming the build of the library against the headers in ``include``."""
    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update(_KERNELS.read_bytes())
    h.update(" ".join(_flags()).encode())
    h.update((include / "onnxruntime_c_api.h").read_bytes())
    return h.hexdigest()[:16]


def target(key: str) -> Path:
    """Where the build ``key`` is (or will be) written."""
    return cache_dir() / "build" / key / "libinvolution_ort.so"


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def no_compiler() -> str | None:
    """Why no compiler can run (None if one can)."""
    if shutil.which(_compiler()) is None:
        return f"no C++ compiler: {_compiler()!r} is not on PATH (set CXX or install g++)"
    return None


def _compile(include: Path, key: str) -> Path:
    built = target(key)
    if built.is_file():  # built before: no compiler needed
        return built
    problem = no_compiler()
    if problem:
        raise RuntimeError(problem)
    with atomic_path(built) as tmp:
        cmd = [_compiler(), *_flags(), f"-I{include}", f"-I{_CSRC}", str(_SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the onnxruntime library failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return built


def library_path() -> Path:
    """The compiled custom-op library (built on first call, then cached).

    Raises:
        RuntimeError: no headers (saying how to get them), no compiler, or the build failed (with its output).
    """
    include = require_headers()
    key = build_key(include)
    with _lock:
        if key in _errors:
            raise RuntimeError(_errors[key])
        if key not in _built:
            try:
                _built[key] = _compile(include, key)
            except RuntimeError as exc:
                _errors[key] = str(exc)
                raise
        return _built[key]
