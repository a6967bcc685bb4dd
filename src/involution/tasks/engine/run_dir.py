"""Run directories: where a training run writes its config, metrics, TensorBoard events, pictures and checkpoints.

Layout (shared by every task that trains)::

    RUN/config.json          the resolved configuration
    RUN/provenance.json      command line, git commit, package versions, threads, seed, world size, start time
    RUN/metrics.json         {"history": [{"epoch", "train_loss", "val_acc", "lr", "time", ...}, ...], ...final}
    RUN/metrics.csv          the history as a table
    RUN/curves.png           loss and accuracy against epoch
    RUN/tb/                  TensorBoard events
    RUN/checkpoints/         last.pt (resumable training state), best.safetensors, last.safetensors (weights)
    RUN/.lock                held (``flock``) by the process training in RUN; holds its PID

One process owns a run directory: :func:`lock_run_dir` takes an exclusive OS lock on ``RUN/.lock`` before anything
is written, and refuses a second run naming the holder's PID. The OS releases the lock when the holder exits,
however it exits (SIGKILL included), so a crashed run never blocks its ``--resume``. Once it holds the lock, a run
clears the temporary files that killed writers left (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..._atomic import write_text_atomic
from .distributed import DistInfo, all_gather_objects

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs there are not protected from each other
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def new_run_dir(root: str | os.PathLike = "runs", prefix: str = "train") -> Path:
    """A fresh folder ``root/PREFIX-YYYYmmdd-HHMMSS[-N]`` (not yet created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{prefix}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def git_commit(path: str | os.PathLike) -> str | None:
    """The commit of the git checkout holding ``path`` (with ``-dirty`` if modified), or None outside git."""
    try:
        cwd = Path(path).resolve()
        cwd = cwd if cwd.is_dir() else cwd.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(seed: int, world_size: int = 1, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where and how a run was made: enough to reproduce or explain its numbers."""
    from ... import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "involution": __version__}
    for name in ("torchvision", "numpy", "sklearn", "triton"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    info = {
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "git_commit": git_commit(Path(__file__)),
        "versions": versions,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "world_size": world_size,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info.update(extra or {})
    return info


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows as CSV (columns: union of the keys, in first-seen order), written atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


CHECKPOINT_FILES = ("best.safetensors", "last.safetensors", "last.pt")  # in the order a run directory is read


def resolve_checkpoint(path: str | os.PathLike, names: Sequence[str] = CHECKPOINT_FILES) -> Path:
    """A checkpoint file: ``path`` itself, or in a run directory the first of ``names`` found in its
    ``checkpoints/`` (or in the folder itself)."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(f"{path}: a folder without a checkpoint (looked for checkpoints/{'|'.join(names)})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (where eval/predict/visualize write by default)."""
    if checkpoint.is_dir():
        return checkpoint
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


class TensorBoard:
    """A thin SummaryWriter wrapper that is a no-op when tensorboard is not installed or on non-main ranks."""

    def __init__(self, log_dir: str | os.PathLike | None, purge_step: int | None = None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock (it is training there)."""


class RunDirLock:
    """The exclusive lock on a run directory (see :func:`lock_run_dir`); :meth:`release` it when done (the OS
    releases it anyway when the process ends). A directory this lock created and nothing else wrote to is
    removed again on release, so a run that fails before writing anything leaves no empty folder behind."""

    def __init__(self, run_dir: Path, fd: int, created: bool) -> None:
        self.run_dir, self.fd, self.created = run_dir, fd, created

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.created and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                (self.run_dir / LOCK_NAME).unlink()  # while still locked (a run that opened it meanwhile retries)
                self.run_dir.rmdir()
        except OSError:
            pass  # only tidying: the folder was removed or written to meanwhile
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def lock_run_dir(run_dir: str | os.PathLike) -> RunDirLock:
    """Take the exclusive lock of ``run_dir`` (created if missing) for this process, writing its PID into the
    lock file; :class:`RunDirBusy` naming the holder's PID if another run holds it."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    for _ in range(10):
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                _flock_or_refuse(fd, run_dir)
                if not _same_file(fd, run_dir / LOCK_NAME):
                    # the holder of a directory it had created removed it on release, between our open and lock:
                    # this lock is on a file nobody else will see; take the new one
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        return RunDirLock(run_dir, fd, created)
    raise RunDirBusy(f"{run_dir} keeps being created and removed by other runs; choose another --out")


def own_run_dir(run_dir: Path, info: DistInfo) -> RunDirLock | None:
    """Rank 0 (the only writer) takes the lock of ``run_dir`` (:func:`lock_run_dir`) before anything is written
    to it; every process raises the same error if that fails (e.g. another run holds it, naming its PID)."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = lock_run_dir(run_dir)
        except (RunDirBusy, OSError) as err:
            error = err
    error = all_gather_objects(error, info)[0]
    if error is not None:
        raise error  # type: ignore[misc]
    return lock


def _flock_or_refuse(fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        holder = os.read(fd, 64).decode("ascii", "replace").strip()
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise RunDirBusy(f"{run_dir} is in use by another run ({who} holds {run_dir / LOCK_NAME}); wait for it to "
                         "finish or stop it, or choose another --out") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


# Temporary files of atomic writes: ``.NAME.PID.tmp`` (involution._atomic) and ``.tmpXXXXXXXX`` (tempfile-style).
_TEMP_NAME = re.compile(r"^\.(?:.+\.(?P<pid>\d+)\.tmp|.+\.tmp|tmp[^.]*)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this run has written nothing yet: a file with its PID is another, dead process's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writers killed mid-write left in ``run_dir`` (and below, except in folders
    holding a lock file of their own: other runs' directories); returns what was removed.

    Call it holding the run's lock: no other training process writes here then. A temporary file naming a live
    process (e.g. an ``involution eval`` writing its report into the run) is left alone; one without a PID can only
    be a dead writer's.
    """
    removed = []
    root = Path(run_dir)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here / d / LOCK_NAME).exists()]
        for name in files:
            match = _TEMP_NAME.match(name)
            if match is None or (match["pid"] is not None and _alive(int(match["pid"]))):
                continue
            try:
                (here / name).unlink()
            except FileNotFoundError:
                continue
            removed.append(here / name)
    return removed
