"""Run studies as independent cells, each a short training run, resumable cell by cell.

A cell is one training run: its settings and seed. Its result is appended to ``results.jsonl`` in the studies
directory the moment it finishes (one JSON object per line, flushed and fsynced), so a study stopped at any point
loses at most the cell in progress, and running it again skips every cell whose key is already there. A
half-written last line (the process killed mid-write) is ignored and that cell rerun. The key is what determines
the result (settings and seed, not the labels a study gives the cell), so studies that share a baseline train it
once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..classification import TrainConfig, train

RESULTS = "results.jsonl"
_NOT_IN_KEY = ("data_dir", "workers", "threads", "log_every", "device")


@dataclass(frozen=True)
class Cell:
    """One training run of a study.

    ``variant`` names the arm being compared (e.g. ``"RedNet"``); ``group`` is the x-axis value it is compared at
    (e.g. a training fraction or a width); ``train`` holds the :class:`TrainConfig` fields of the run.
    """

    variant: str
    group: Any
    seed: int
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What determines the cell's result: the training settings (less where the data lives) and the seed."""
        settings = {k: v for k, v in self.train.items() if k not in _NOT_IN_KEY}
        return json.dumps([settings, self.seed], sort_keys=True, default=str)

    @property
    def dirname(self) -> str:
        return hashlib.sha1(self.key.encode()).hexdigest()[:12]

    def config(self) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "seed": self.seed})


def read_results(study_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished cells' results of a study directory (a torn last line is skipped)."""
    path = Path(study_dir) / RESULTS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a write cut short by a kill: that cell is simply run again
    return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        # after a torn last line, start a fresh one so this result stays readable
        f.write(("\n" if torn else "") + json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sync_results(a: str | os.PathLike, b: str | os.PathLike) -> int:
    """Make ``a/results.jsonl`` and ``b/results.jsonl`` both hold the union of their results; returns its size.

    The studies' results travel with the reports (``docs/studies/results.jsonl``, committed), so a clean checkout
    resumes a study where any earlier machine left it, without the cells' run directories.
    """
    have = {folder: {row["key"]: row for row in read_results(folder)} for folder in (a, b)}
    union = {**have[a], **have[b]}
    for folder in (a, b):
        # append what is missing (never rewrite: another process may be appending to the same file)
        Path(folder).mkdir(parents=True, exist_ok=True)
        for key, row in union.items():
            if key not in have[folder]:
                _append(Path(folder) / RESULTS, row)
    return len(union)


def _lock(root: Path, cell: Cell) -> Path:
    return root / "cells" / f"{cell.dirname}.lock"


def _claim(root: Path, cell: Cell) -> bool:
    """Take the cell for this process (False if a live process holds it), so that studies sharing cells can run
    side by side on one root."""
    lock = _lock(root, cell)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or "0")
            os.kill(pid, 0)
            return pid == os.getpid()
        except (ValueError, ProcessLookupError, FileNotFoundError):
            lock.unlink(missing_ok=True)  # left by a process that died: take it over
            return _claim(root, cell)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_cells(
    cells: Sequence[Cell],
    root: str | os.PathLike,
    progress: bool = True,
    desc: str = "cells",
) -> list[dict[str, Any]]:
    """Train every cell not yet in ``root/results.jsonl``; returns the cells' results with their labels.

    Each cell trains in ``root/cells/<hash of its key>`` (a run directory, as ``involution train`` writes). Several
    processes may share ``root``: each cell is claimed with a lock file, and a cell another live process holds is
    left to it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    done = {row["key"] for row in read_results(root)}
    todo = list({c.key: c for c in cells if c.key not in done}.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len({c.key for c in cells})
        bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="cell", dynamic_ncols=True)
    for cell in todo:
        if cell.key in {row["key"] for row in read_results(root)} or not _claim(root, cell):
            continue  # finished meanwhile, or being trained by another process working on the same root
        run_dir = root / "cells" / cell.dirname
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished attempt (its result never reached results.jsonl): start over
        start = time.perf_counter()
        result = train(cell.config(), out=run_dir, progress=False, quiet=True)
        m = result.metrics
        row = {
            "key": cell.key,
            "train": cell.train,
            "seed": cell.seed,
            "test_acc": m["test_acc"],
            "val_acc": m["best_val_acc"],
            "params": m["params"],
            "macs": m["macs"],
            "steps": m["steps"],
            "train_time_s": m["train_time_s"],
            "seconds_per_step": m["train_time_s"] / max(m["steps"], 1),
            "wall_s": round(time.perf_counter() - start, 2),
            "run_dir": str(run_dir.relative_to(root)),
        }
        _append(root / RESULTS, row)
        _lock(root, cell).unlink(missing_ok=True)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"last: {cell.variant} / {cell.group} / seed {cell.seed}: {100 * m['test_acc']:.2f}%")
    if bar is not None:
        bar.close()
    return labelled_results(cells, root)


def labelled_results(cells: Sequence[Cell], root: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished results of ``cells`` (those not run yet are left out), each with its variant and group."""
    by_key = {row["key"]: row for row in read_results(root)}
    return [{**by_key[c.key], "variant": c.variant, "group": c.group} for c in cells if c.key in by_key]
