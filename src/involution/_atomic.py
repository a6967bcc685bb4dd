"""Atomic file writes: write beside the target under a temporary name, fsync, then rename over the target.

A crash or Ctrl-C mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX and Windows). The
file gets the mode the user's umask gives, whatever mode its writer created the temporary file with. A write that
fails raises :class:`WriteError` naming the target and the cause (disk full, read-only file system, a folder on
the way that is a file ...) and leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

# Below this much free space a failed write is put down to a full disk (a full disk shows a few blocks at most).
_FULL_DISK_BYTES = 1 << 20
_STRERROR_CODES = {os.strerror(code): code for code in errno.errorcode}


class WriteError(OSError):
    """A file could not be written; ``filename`` is the file, ``strerror`` the cause, ``errno`` its code."""

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}"


def io_failure(err: BaseException) -> OSError:
    """An ``OSError`` for a writer library's failure (safetensors' ``SafetensorError``, torch's ``RuntimeError``),
    with the errno its message carries ("os error 28", "strerror: Read-only file system"), else none."""
    text = str(err)
    match = re.search(r"os error (\d+)", text)
    code = int(match.group(1)) if match else None
    if code is None:
        code = next((c for s, c in _STRERROR_CODES.items() if f"strerror: {s}" in text), None)
    return OSError(code, text.splitlines()[0] if text else type(err).__name__)


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    return st.f_frsize * (st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail)


def _disk_full(folder: Path) -> bool:
    free = _free_bytes(folder)
    return free is not None and free < _FULL_DISK_BYTES


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (so nothing can be created under it)."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def write_error(path: Path, err: BaseException) -> WriteError:
    """:class:`WriteError` for ``path`` from the failure ``err``: the cause named in words, from its errno or, when
    the failure carries none (torch's "unexpected pos"), from the state of the destination's file system."""
    if isinstance(err, WriteError):
        return err
    code = err.errno if isinstance(err, OSError) else None
    detail = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
    blocker = _blocking_file(path)
    folder = next((p for p in path.parents if p.is_dir()), Path("."))
    if blocker is not None:
        code, cause = errno.ENOTDIR, f"{blocker} is a file, not a directory"
    elif path.is_dir():
        code, cause = errno.EISDIR, f"{path} is a directory"
    elif code == errno.ENOSPC or (code is None and _disk_full(folder)):
        code, cause = errno.ENOSPC, "no space left on the device (the disk is full)"
    elif code == errno.EROFS or (code is None and _read_only(folder)):
        code, cause = errno.EROFS, f"{folder} is on a read-only file system"
    elif code in (errno.EACCES, errno.EPERM):
        cause = f"permission denied: no files can be created in {folder}"
    elif code is not None:
        cause = os.strerror(code)
    else:
        cause = detail or type(err).__name__
    return WriteError(code, cause, str(path))


def _concerns(err: OSError, path: Path, tmp: Path) -> bool:
    """Whether ``err`` is about writing ``path``: no file named (a writer library's), the file, or a folder above."""
    name = err.filename
    return name is None or (isinstance(name, (str, os.PathLike)) and Path(name) in (path, tmp, *path.parents))


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set
    and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_umask_mode(fd: int) -> None:
    """Give the file ``fd`` the mode a plain ``open()`` would have: ``0o666`` (``0o777`` if the writer made it
    executable, as a linker does) less the umask. Some writers create their file 0600 whatever the umask
    (safetensors does), so without this a checkpoint is unreadable to the group when every other file is not."""
    if not hasattr(os, "fchmod"):  # Windows: no POSIX modes to give
        return
    mode = os.fstat(fd).st_mode & 0o777
    wanted = (0o777 if mode & 0o111 else 0o666) & ~current_umask()
    if mode != wanted:
        os.fchmod(fd, wanted)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    An ``OSError`` from the writing (writers turn their libraries' errors into one with :func:`io_failure`), the
    fsync or the rename becomes a :class:`WriteError` naming ``path`` and the cause.

    >>> with atomic_path("run/last.pt") as tmp:
    ...     torch.save(state, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            with open(tmp, "rb+") as f:
                _give_umask_mode(f.fileno())
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            if not _concerns(err, path, tmp):  # about another file (e.g. a program the writer runs): as it is
                raise
            raise write_error(path, err) from err
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def refuse_same_file(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """``ValueError`` when ``destination`` is ``source`` (the same path, a symlink or hard link to it): writing it
    would destroy the file being read."""
    if os.path.exists(destination) and os.path.exists(source) and os.path.samefile(source, destination):
        raise ValueError(
            f"{destination}: the destination is the same file as the source {source}; writing it would destroy the "
            "source: choose another output path"
        )


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
