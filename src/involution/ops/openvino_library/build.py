"""Compiling the OpenVINO extension (``ops/csrc/involution_ov.cpp``) with g++ against the installed ``openvino``
wheel, which ships the C++ headers (``openvino/include``) and the libraries (``openvino/libs``) it needs.

The extension links OpenVINO's core library, its ONNX frontend (whose conversion class it extends; OpenVINO 2025
keeps part of it there, 2026 in the headers, and the link is then dropped) and the TBB that OpenVINO runs on, by
their versioned names (the wheel has no unversioned ``.so`` links), with the wheel's ``libs`` folder as run path.
It is compiled with the C++ library ABI OpenVINO was built with, which its CMake config states
(``OpenVINO_GLIBCXX_USE_CXX11_ABI``: 0 in the manylinux2014 wheels of 2025, 1 in the manylinux_2_28 ones of 2026).
It is built into ``<cache>/build/<hash>/`` (the hash covers ``involution_ov.cpp``, the shared NCHW kernels
``involution_nchw.h``, the flags, OpenVINO's version header and the libraries linked), atomically
(:mod:`.._runtime_build`).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from .._native import simd_flags
from .._runtime_build import CSRC, BuildMemo, build_key, cache_root, compile_library, kernels_source

__all__ = ["OpenVINOInstall", "cache_dir", "find_openvino", "library_path", "require_openvino", "target"]

_SOURCE = CSRC / "involution_ov.cpp"
INSTALL_HINT = "pip install 'involution[openvino]' (or: pip install openvino)"
# What the build reads from the wheel: a header of the op API, of the ONNX frontend, of TBB, and the version header.
_HEADERS = ("openvino/op/op.hpp", "openvino/frontend/onnx/extension/conversion.hpp", "tbb/parallel_for.h",
            "openvino/core/version.hpp")
_LIBRARIES = ("libopenvino", "libopenvino_onnx_frontend", "libtbb")
_CMAKE_CONFIG = "cmake/OpenVINOConfig.cmake"
_builds = BuildMemo()


@dataclass(frozen=True)
class OpenVINOInstall:
    """An installed ``openvino`` package: its folder, C++ include folder and the libraries the extension links."""

    root: Path
    include: Path
    libraries: tuple[Path, ...]
    cxx11_abi: str  # "0" or "1": the _GLIBCXX_USE_CXX11_ABI OpenVINO was compiled with

    def flags(self) -> list[str]:
        """The compiler and linker flags of the build (before the source and the libraries)."""
        return [*_flags(), f"-D_GLIBCXX_USE_CXX11_ABI={self.cxx11_abi}", "-Wl,--as-needed",
                f"-Wl,-rpath,{self.libraries[0].parent}", f"-I{self.include}", f"-I{CSRC}"]

    def key(self) -> str:
        """The hash naming the extension's build against this install."""
        return build_key(_SOURCE.read_bytes(), kernels_source(), " ".join(self.flags()),
                         (self.include / "openvino/core/version.hpp").read_bytes(),
                         " ".join(map(str, self.libraries)))


def cache_dir() -> Path:
    """``$INVOLUTION_CACHE/openvino`` (default ``~/.cache/involution/openvino``)."""
    return cache_root() / "openvino"


def _flags() -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", *simd_flags()]


def _library(libs: Path, stem: str) -> Path | None:
    """``libs/<stem>.so.<version>`` (or ``<stem>.so``), None if neither exists."""
    found = sorted(p for p in libs.glob(f"{stem}.so.*") if p.name[len(stem) + 4:].replace(".", "").isdigit())
    plain = libs / f"{stem}.so"
    return found[0] if found else (plain if plain.is_file() else None)


def _locate() -> tuple[OpenVINOInstall | None, str | None]:
    """The install, or None and why it cannot build the extension."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return None, f"the 'openvino' package is not installed: {INSTALL_HINT}"
    root = Path(next(iter(spec.submodule_search_locations)))
    include, libs = root / "include", root / "libs"
    missing = [h for h in _HEADERS if not (include / h).is_file()]
    if missing:
        return None, (f"openvino at {root} ships no C++ headers (no {include / missing[0]}); install the openvino "
                      "wheel from PyPI, which has them")
    found = {stem: _library(libs, stem) for stem in _LIBRARIES}
    absent = [stem for stem, path in found.items() if path is None]
    if absent:
        return None, f"openvino at {root} has no {libs / absent[0]}.so.* to link the extension with"
    libraries = tuple(path for path in found.values() if path is not None)  # all of them: none is absent
    return OpenVINOInstall(root, include, libraries, _cxx11_abi(root)), None


def _cxx11_abi(root: Path) -> str:
    """The ``_GLIBCXX_USE_CXX11_ABI`` that OpenVINO's CMake config at ``root`` states (default 1: gcc's)."""
    config = root / _CMAKE_CONFIG
    text = config.read_text(errors="replace") if config.is_file() else ""
    match = re.search(r'set\(OpenVINO_GLIBCXX_USE_CXX11_ABI "([01])"\)', text)
    return match.group(1) if match else "1"


def find_openvino() -> OpenVINOInstall | None:
    """The installed ``openvino`` wheel, if it has the headers and libraries the build needs, else None."""
    return _locate()[0]


def require_openvino() -> OpenVINOInstall:
    """:func:`find_openvino`, or RuntimeError saying what is missing and how to get it."""
    install, problem = _locate()
    if install is None:
        raise RuntimeError(f"the OpenVINO extension cannot be built: {problem}")
    return install


def target(key: str) -> Path:
    """Where the build ``key`` is (or will be) written."""
    return cache_dir() / "build" / key / "libinvolution_openvino.so"


def _compile(install: OpenVINOInstall, key: str) -> Path:
    args = [*install.flags(), str(_SOURCE), *map(str, install.libraries)]
    return compile_library(target(key), args, "the OpenVINO extension")


def library_path() -> Path:
    """The compiled OpenVINO extension (built on first call, then cached).

    Raises:
        RuntimeError: openvino is not installed or lacks headers or libraries, no compiler, or the build failed
            (with its output).
    """
    install = require_openvino()
    key = install.key()
    return _builds.get(key, lambda: _compile(install, key))
