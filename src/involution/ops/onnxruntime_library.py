"""The onnxruntime custom-operator library for involution (``ops/csrc/involution_ort.cpp``): headers, build, load.

An ONNX file exported with ``onnx_ops="custom"`` holds ``involution::Involution2d`` nodes, which onnxruntime runs
once this library is registered with the session::

    from involution.ops.onnxruntime_library import session_options
    session = onnxruntime.InferenceSession("rednet50.onnx", session_options(), providers=["CPUExecutionProvider"])

(or, without this package: ``opts.register_custom_ops_library(path)`` with the ``.so`` that :func:`library_path`
builds; it needs only libstdc++ and onnxruntime, not PyTorch.)

Building needs g++ and onnxruntime's C/C++ API headers, which the onnxruntime wheel does not ship. Where they are
looked for, first found wins: ``$INVOLUTION_ORT_INCLUDE``; the folder :func:`fetch_headers` fills
(``<cache>/onnxruntime/include``); ``/usr/include/onnxruntime``; ``/usr/local/include/onnxruntime``. The cache is
``$INVOLUTION_CACHE`` (default ``~/.cache/involution``). :func:`fetch_headers` (``python -m
involution.ops.onnxruntime_library fetch-headers``) takes them from Debian's ``libonnxruntime-dev`` package (API
version 21: onnxruntime keeps its C API backward compatible, so the library runs on 1.21 and every later runtime).

The library is compiled once per source (``involution_ort.cpp`` and the NCHW kernels it shares with the PyTorch
extension, ``involution_nchw.h``), header set and flag set, into ``<cache>/onnxruntime/build/<hash>/``, and
written atomically (a concurrent or interrupted build never leaves a half-written ``.so`` behind).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

from .._atomic import atomic_path
from ._native import simd_flags

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "fetch_headers",
    "find_headers",
    "is_available",
    "library_path",
    "session_options",
    "status",
    "unavailable_reason",
]

DOMAIN = "involution"
OP_TYPE = "Involution2d"

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCE = _CSRC / "involution_ort.cpp"
# The NCHW kernels it includes, shared with the PyTorch extension (backends/cpu.py).
_KERNELS = _CSRC / "involution_nchw.h"
_HEADER = "onnxruntime_cxx_api.h"
# Debian trixie's headers of onnxruntime 1.21.0 (85 KB); the hash guards against a corrupt or substituted file.
_DEB_NAME = "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
_DEB_URLS = tuple(
    f"{mirror}/pool/main/o/onnxruntime/{_DEB_NAME}"
    for mirror in ("http://deb.debian.org/debian", "http://ftp.debian.org/debian")
)
_DEB_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
_DEB_INCLUDE = "./usr/include/onnxruntime/"

_lock = threading.Lock()
_built: dict[str, Path] = {}
_errors: dict[str, str] = {}


def cache_dir() -> Path:
    """``$INVOLUTION_CACHE/onnxruntime`` (default ``~/.cache/involution/onnxruntime``)."""
    root = os.environ.get("INVOLUTION_CACHE") or Path.home() / ".cache" / "involution"
    return Path(root) / "onnxruntime"


def _candidates() -> list[Path]:
    env = os.environ.get("INVOLUTION_ORT_INCLUDE")
    found = [Path(env)] if env else []
    return [*found, cache_dir() / "include", Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]


def find_headers() -> Path | None:
    """The first folder holding ``onnxruntime_cxx_api.h`` (see the module docstring for the order), or None."""
    for folder in _candidates():
        if (folder / _HEADER).is_file():
            return folder
    return None


# ------------------------------------------------------------------------------------------------- headers
def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a ``.deb`` is one): name -> contents."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    return members


def _extract_headers(deb: bytes, dest: Path) -> None:
    members = _ar_members(deb)
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise ValueError(f"no data.tar.* in the package (members: {', '.join(members)})")
    tmp = Path(tempfile.mkdtemp(prefix=".include.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith(_DEB_INCLUDE):
                    continue
                rel = member.name[len(_DEB_INCLUDE):]
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
        if not (tmp / _HEADER).is_file():
            raise ValueError(f"the package holds no {_HEADER}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fetch_headers(dest: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download onnxruntime's API headers (Debian's ``libonnxruntime-dev``, checked by SHA-256) into ``dest``.

    A setup step, like ``pip install``: nothing else in this package downloads. Returns the include folder
    (default ``<cache>/onnxruntime/include``); does nothing if it already holds the headers.

    Raises:
        RuntimeError: no mirror could be reached, or the download's hash is wrong (names the URLs and the fix).
    """
    dest = Path(dest) if dest is not None else cache_dir() / "include"
    if (dest / _HEADER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in _DEB_URLS:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                deb = response.read()
        except OSError as exc:
            failures.append(f"{url}: {exc}")
            continue
        digest = hashlib.sha256(deb).hexdigest()
        if digest != _DEB_SHA256:
            failures.append(f"{url}: SHA-256 {digest}, expected {_DEB_SHA256}")
            continue
        _extract_headers(deb, dest)
        return dest
    raise RuntimeError(
        "could not fetch onnxruntime's headers:\n  " + "\n  ".join(failures)
        + "\nInstall them another way (e.g. Debian's libonnxruntime-dev, or the include/ folder of an onnxruntime "
        "release) and point INVOLUTION_ORT_INCLUDE at the folder holding onnxruntime_cxx_api.h"
    )


# --------------------------------------------------------------------------------------------------- build
def _flags() -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", *simd_flags()]


def _build_key(include: Path) -> str:
    h = hashlib.sha256(_SOURCE.read_bytes())
    h.update(_KERNELS.read_bytes())
    h.update(" ".join(_flags()).encode())
    h.update((include / "onnxruntime_c_api.h").read_bytes())
    return h.hexdigest()[:16]


def _target(key: str) -> Path:
    return cache_dir() / "build" / key / "libinvolution_ort.so"


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _no_compiler() -> str | None:
    """Why no compiler can run (None if one can)."""
    if shutil.which(_compiler()) is None:
        return f"no C++ compiler: {_compiler()!r} is not on PATH (set CXX or install g++)"
    return None


def _compile(include: Path, key: str) -> Path:
    target = _target(key)
    if target.is_file():  # built before: no compiler needed
        return target
    problem = _no_compiler()
    if problem:
        raise RuntimeError(problem)
    compiler = _compiler()
    with atomic_path(target) as tmp:
        cmd = [compiler, *_flags(), f"-I{include}", f"-I{_CSRC}", str(_SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the onnxruntime library failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return target


def library_path() -> Path:
    """The compiled custom-op library (built on first call, then cached).

    Raises:
        RuntimeError: no headers (saying how to get them), no compiler, or the build failed (with its output).
    """
    include = find_headers()
    if include is None:
        raise RuntimeError(
            "onnxruntime's C++ API headers were not found (looked in "
            + ", ".join(str(p) for p in _candidates())
            + "); fetch them with `python -m involution.ops.onnxruntime_library fetch-headers` "
            "or set INVOLUTION_ORT_INCLUDE"
        )
    key = _build_key(include)
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


def unavailable_reason() -> str | None:
    """None if the library can be built (or is), else why not."""
    try:
        library_path()
    except RuntimeError as exc:
        return str(exc)
    return None


def status() -> str:
    """One line on the library's state, without building it: built (where), buildable, or why not."""
    include = find_headers()
    if include is None:
        return "unavailable: no onnxruntime headers (python -m involution.ops.onnxruntime_library fetch-headers)"
    target = _target(_build_key(include))
    if target.is_file():
        return f"built: {target}"
    problem = _no_compiler()
    if problem:
        return f"unavailable: {problem}"
    return f"not built yet (headers in {include}; built on first use)"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m involution.ops.onnxruntime_library",
        description="onnxruntime's involution custom-op library: fetch the headers, build, or say where it is",
    )
    parser.add_argument("action", choices=("fetch-headers", "build", "path"))
    parser.add_argument("--dest", help="fetch-headers: the include folder to fill (default: the cache)")
    args = parser.parse_args(argv)
    try:
        if args.action == "fetch-headers":
            print(f"onnxruntime headers in {fetch_headers(args.dest)}")
        else:
            path = library_path()
            print(path if args.action == "path" else f"built {path}")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
