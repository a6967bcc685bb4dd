"""onnxruntime's C/C++ API headers, which its wheel does not ship: where they are looked for, and the download.

Looked for in order, first found wins: ``$INVOLUTION_ORT_INCLUDE``; the folder :func:`fetch_headers` fills
(``<cache>/include``); ``/usr/include/onnxruntime``; ``/usr/local/include/onnxruntime``. :func:`fetch_headers`
takes them from Debian's ``libonnxruntime-dev`` package (API version 21: onnxruntime keeps its C API backward
compatible, so the library runs on 1.21 and every later runtime).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .._runtime_build import cache_root

HEADER = "onnxruntime_cxx_api.h"
# Debian trixie's headers of onnxruntime 1.21.0 (85 KB); the hash guards against a corrupt or substituted file.
_DEB_NAME = "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
_DEB_URLS = tuple(
    f"{mirror}/pool/main/o/onnxruntime/{_DEB_NAME}"
    for mirror in ("http://deb.debian.org/debian", "http://ftp.debian.org/debian")
)
_DEB_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
_DEB_INCLUDE = "./usr/include/onnxruntime/"


def cache_dir() -> Path:
    """``$INVOLUTION_CACHE/onnxruntime`` (default ``~/.cache/involution/onnxruntime``)."""
    return cache_root() / "onnxruntime"


def candidates() -> list[Path]:
    """The folders searched for the headers, in order."""
    env = os.environ.get("INVOLUTION_ORT_INCLUDE")
    found = [Path(env)] if env else []
    return [*found, cache_dir() / "include", Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]


def find_headers() -> Path | None:
    """The first folder holding ``onnxruntime_cxx_api.h`` (see the module docstring for the order), or None."""
    for folder in candidates():
        if (folder / HEADER).is_file():
            return folder
    return None


def require_headers() -> Path:
    """:func:`find_headers`, or RuntimeError naming the folders searched and how to get the headers."""
    include = find_headers()
    if include is None:
        raise RuntimeError(
            "onnxruntime's C++ API headers were not found (looked in "
            + ", ".join(str(p) for p in candidates())
            + "); fetch them with `involution onnxruntime fetch-headers` "
            "(or involution.ops.onnxruntime_library.fetch_headers()) or set INVOLUTION_ORT_INCLUDE"
        )
    return include


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
    """Write the headers of the ``.deb`` ``deb`` into ``dest`` (replaced whole, atomically)."""
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
                target = tmp / member.name[len(_DEB_INCLUDE):]
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file's member (isfile above) always has its data
                target.write_bytes(source.read())
        if not (tmp / HEADER).is_file():
            raise ValueError(f"the package holds no {HEADER}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def fetch_headers(dest: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download onnxruntime's API headers (Debian's ``libonnxruntime-dev``, checked by SHA-256) into ``dest``.

    A setup step, like ``pip install``: nothing else in this package downloads. Returns the include folder
    (default ``<cache>/include``); does nothing if it already holds the headers.

    Raises:
        RuntimeError: no mirror could be reached, or the download's hash is wrong (names the URLs and the fix).
    """
    dest = Path(dest) if dest is not None else cache_dir() / "include"
    if (dest / HEADER).is_file():
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
