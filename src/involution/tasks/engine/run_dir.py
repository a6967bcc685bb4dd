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
clears the temporary files that killed writers left (:func:`remove_stale_temp_files`). A fresh run never writes
over the files of an earlier one (or a user's own ``config.json`` in ``--out .``) unless told to
(:func:`earlier_run`).
"""

from __future__ import annotations

import csv
import errno
import importlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from ..._atomic import write_text_atomic
from .distributed import DistInfo, all_gather_objects

try:
    fcntl: ModuleType | None = importlib.import_module("fcntl")
except ImportError:  # pragma: no cover - Windows: no flock; runs there are not protected from each other
    fcntl = None

LOCK_NAME = ".lock"
T = TypeVar("T")


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


# What a training run writes in its directory: names, then patterns of names (resumed runs' provenance, events).
RUN_OUTPUTS = ("config.json", "provenance.json", "metrics.json", "metrics.csv", "curves.png",
               *(f"checkpoints/{name}" for name in CHECKPOINT_FILES))
RUN_OUTPUT_PATTERNS = ("provenance-resume-*.json", "tb/events.out.tfevents.*")


def run_outputs(run_dir: Path) -> list[Path]:
    """The files in ``run_dir`` that a training run writes: an earlier run's, or a user's own ``config.json`` in
    ``--out .``, which a fresh run there would write over."""
    found = [run_dir / name for name in RUN_OUTPUTS if os.path.lexists(run_dir / name)]
    for pattern in RUN_OUTPUT_PATTERNS:
        found += sorted(run_dir.glob(pattern))
    return found


def describe_outputs(run_dir: Path, found: Sequence[Path]) -> str:
    """``found`` (:func:`run_outputs`) in a few words: "a run (finished, 6 epoch(s); config.json, metrics.json,
    checkpoints/best.safetensors and 6 more)", or just the names when no run's metrics.json is among them."""
    names = [path.relative_to(run_dir).as_posix() for path in found]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        status, epochs = metrics["status"], len(metrics["history"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or not a run's: the user's own file
        return shown
    return f"a run ({status}, {epochs} epoch(s); {shown})"


def remove_outputs(found: Sequence[Path]) -> None:
    """Remove an earlier run's files (:func:`earlier_run`) before a run with ``--overwrite`` writes its own, so
    that none of them (an old curve, old TensorBoard events, a resume state) is left to mix with the new run."""
    for path in found:
        path.unlink(missing_ok=True)


def earlier_run(run_dir: Path, info: DistInfo, replace: bool) -> list[Path]:
    """The files a fresh run in ``run_dir`` would write over (:func:`run_outputs`; rank 0 looks, the others get
    ``[]``); unless ``replace``, every process raises the same FileExistsError saying what is there and the ways on
    (``--resume``, ``--overwrite``), so that nothing saved is changed."""

    def look() -> list[Path]:
        found = run_outputs(run_dir)
        if found and not replace:
            raise FileExistsError(
                f"--out {run_dir} already holds {describe_outputs(run_dir, found)}, which a fresh run would write "
                "over: pass --resume to continue that run, --overwrite to replace it, or choose another --out")
        return found

    return on_main_rank(look, info) or []


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
    releases it anyway when the process ends). A lock file this lock made is removed again on release, and so is a
    directory it created that nothing else wrote to: a run that fails or is refused before writing anything leaves
    no empty folder and no lock file behind (e.g. in the user's own folder given as ``--out .``)."""

    def __init__(self, run_dir: Path, fd: int, created: bool, made_file: bool) -> None:
        self.run_dir, self.fd, self.created, self.made_file = run_dir, fd, created, made_file

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.made_file:
                (self.run_dir / LOCK_NAME).unlink()  # while still locked (a run that opened it meanwhile retries)
            if self.created:
                self.run_dir.rmdir()  # only if empty (OSError otherwise)
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
    _refuse_a_file(run_dir)
    created = not run_dir.exists()
    for _ in range(10):
        run_dir.mkdir(parents=True, exist_ok=True)
        made_file = not (run_dir / LOCK_NAME).exists()
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
        return RunDirLock(run_dir, fd, created, made_file)
    raise RunDirBusy(f"{run_dir} keeps being created and removed by other runs; choose another --out")


def _refuse_a_file(run_dir: Path) -> None:
    """NotADirectoryError if ``run_dir``, or the nearest of its parents that exists, is not a folder."""
    for path in (run_dir, *run_dir.parents):
        if path.is_dir():
            return
        if os.path.lexists(path):
            where = "" if path == run_dir else f" ({path} is a file)"
            raise NotADirectoryError(f"--out {run_dir}{where}: a file, not a directory; name a folder for the run "
                                     "(created if missing)")


def on_main_rank(work: Callable[[], T], info: DistInfo) -> T | None:
    """``work()`` on rank 0, the only process that touches the run directory (None on the others); an OSError or
    RuntimeError it raises is raised on every process alike, so that all of them stop together."""
    result, error = None, None
    if info.is_main:
        try:
            result = work()
        except (OSError, RuntimeError) as err:
            error = err
    raised = all_gather_objects(error, info)[0]  # rank 0's error, on every process
    if isinstance(raised, BaseException):
        raise raised
    return result


def own_run_dir(run_dir: Path, info: DistInfo) -> RunDirLock | None:
    """Rank 0 (the only writer) takes the lock of ``run_dir`` (:func:`lock_run_dir`) before anything is written
    to it; every process raises the same error if that fails (e.g. another run holds it, naming its PID)."""
    return on_main_rank(lambda: lock_run_dir(run_dir), info)


def _flock_or_refuse(fd: int, run_dir: Path) -> None:
    if fcntl is None:  # no flock on this system: nothing to take
        return
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
