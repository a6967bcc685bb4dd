"""Compiling the custom-op library (``ops/csrc/involution_ort.cpp``) with g++, once per source, headers and flags.

The library is built into ``<cache>/build/<hash>/`` (the hash covers ``involution_ort.cpp``, the NCHW kernels it
shares with the PyTorch extension, ``involution_nchw.h``, the flags and onnxruntime's C API header) and written
atomically: a concurrent or interrupted build never leaves a half-written ``.so`` behind
(:mod:`.._runtime_build`).
"""

from __future__ import annotations

from pathlib import Path

from .._native import simd_flags
from .._runtime_build import CSRC, BuildMemo, compile_library, kernels_source, no_compiler
from .._runtime_build import build_key as _hash
from .headers import cache_dir, require_headers

__all__ = ["build_key", "library_path", "no_compiler", "target"]

_SOURCE = CSRC / "involution_ort.cpp"
_builds = BuildMemo()


def _flags() -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", *simd_flags()]


def build_key(include: Path) -> str:
    """The hash naming the build of the library against the headers in ``include``."""
    return _hash(_SOURCE.read_bytes(), kernels_source(), " ".join(_flags()),
                 (include / "onnxruntime_c_api.h").read_bytes())


def target(key: str) -> Path:
    """Where the build ``key`` is (or will be) written."""
    return cache_dir() / "build" / key / "libinvolution_ort.so"


def _compile(include: Path, key: str) -> Path:
    args = [*_flags(), f"-I{include}", f"-I{CSRC}", str(_SOURCE)]
    return compile_library(target(key), args, "the onnxruntime library")


def library_path() -> Path:
    """The compiled custom-op library (built on first call, then cached).

    Raises:
        RuntimeError: no headers (saying how to get them), no compiler, or the build failed (with its output).
    """
    include = require_headers()
    key = build_key(include)
    return _builds.get(key, lambda: _compile(include, key))
