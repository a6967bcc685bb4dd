"""Run directories: where a training run writes its config, metrics, TensorBoard events, pictures and checkpoints.

Layout (shared by every task that trains)::

    RUN/config.json          the resolved configuration
    RUN/provenance.json      command line, git commit, package versions, threads, seed, world size, start time
    RUN/metrics.json         {"history": [{"epoch", "train_loss", "val_acc", "lr", "time", ...}, ...], ...final}
    RUN/metrics.csv          the history as a table
    RUN/curves.png           loss and accuracy against epoch
    RUN/tb/                  TensorBoard events
    RUN/checkpoints/         last.pt (resumable training state), best.safetensors, last.safetensors (weights)
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._atomic import write_text_atomic


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
    from .. import __version__

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
