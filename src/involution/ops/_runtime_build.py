"""Building a runtime's C++ library with g++ on first use: the onnxruntime custom-op library
(:mod:`.onnxruntime_library`) and the OpenVINO extension (:mod:`.openvino_library`).

Each library is built once per key (a hash of its sources, flags and the runtime's headers) into
``<cache>/<runtime>/build/<key>/`` and written atomically: a concurrent or interrupted build never leaves a
half-written ``.so`` behind. A built library is used as it is, with no compiler; a process remembers each key's
result, or the error its build raised, so a failed build is not retried on every call.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .._atomic import atomic_path

CSRC = Path(__file__).resolve().parent / "csrc"
# The NCHW / NCDHW kernels every library includes, shared with the PyTorch extension (backends/cpu.py).
KERNELS = (CSRC / "involution_nchw.h", CSRC / "involution_ncdhw.h")


def kernels_source() -> bytes:
    """The text of :data:`KERNELS`, part of every library's build key."""
    return b"".join(path.read_bytes() for path in KERNELS)


def cache_root() -> Path:
    """``$INVOLUTION_CACHE`` (default ``~/.cache/involution``): each runtime's library lives in a folder of it."""
    return Path(os.environ.get("INVOLUTION_CACHE") or Path.home() / ".cache" / "involution")


def build_key(*parts: bytes | str) -> str:
    """The hash naming one build: of the sources, flags and runtime headers given as ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def compiler() -> str:
    """The C++ compiler: ``$CXX``, default ``g++``."""
    return os.environ.get("CXX", "g++")


def no_compiler() -> str | None:
    """Why no compiler can run (None if one can)."""
    if shutil.which(compiler()) is None:
        return f"no C++ compiler: {compiler()!r} is not on PATH (set CXX or install g++)"
    return None


def compile_library(built: Path, args: Sequence[str], what: str) -> Path:
    """``built`` as it is if it exists, else compiled there by ``<compiler> args -o built`` (atomically).

    Raises:
        RuntimeError: no compiler, or the compiler failed (``what`` names the library; its command and the end of
            its output follow).
    """
    if built.is_file():  # built before: no compiler needed
        return built
    problem = no_compiler()
    if problem:
        raise RuntimeError(problem)
    with atomic_path(built) as tmp:
        cmd = [compiler(), *args, "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building {what} failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return built


def why_unavailable(library_path: Callable[[], Path]) -> str | None:
    """None if ``library_path()`` gives the library (building it if need be), else why it cannot (its error)."""
    try:
        library_path()
    except RuntimeError as exc:
        return str(exc)
    return None


def build_status(built: Path, inputs: str) -> str:
    """One line on a library that builds on first use, without building it: ``built`` exists, else why it cannot
    be built, else that it will be (from ``inputs``, e.g. "headers in DIR")."""
    if built.is_file():
        return f"built: {built}"
    problem = no_compiler()
    if problem:
        return f"unavailable: {problem}"
    return f"not built yet ({inputs}; built on first use)"


class BuildMemo:
    """The result of each build key in this process: the library's path, or the error its build raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[str, Path] = {}
        self._errors: dict[str, str] = {}

    def get(self, key: str, build: Callable[[], Path]) -> Path:
        """The path ``build()`` gave for ``key`` (called once per key); RuntimeError again if it raised one."""
        with self._lock:
            if key in self._errors:
                raise RuntimeError(self._errors[key])
            if key not in self._built:
                try:
                    self._built[key] = build()
                except RuntimeError as exc:
                    self._errors[key] = str(exc)
                    raise
            return self._built[key]
