"""Studies: reproducible experiments that test the claims made about involution.

``involution study NAME`` trains the study's cells (resumable, one result line per finished cell) and writes a
report: a summary table (mean ± sd over seeds; per comparison Welch's t-test, 95% CI, Holm-corrected p), a plot,
the command and the compute used. See :mod:`.definitions` for the questions and the runs each takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .definitions import STUDIES, Study, StudyOptions
from .report import markdown_table, summarize, write_report
from .runner import Cell, labelled_results, read_results, run_cells, sync_results

__all__ = [
    "STUDIES", "Cell", "Study", "StudyOptions", "labelled_results", "markdown_table", "read_results", "run_cells",
    "run_study", "summarize", "sync_results", "write_report",
]


def run_study(
    name: str,
    out: str | os.PathLike,
    options: StudyOptions | None = None,
    report_dir: str | os.PathLike | None = None,
    command: str = "",
    progress: bool = True,
    train_missing: bool = True,
) -> dict[str, Any]:
    """Run (or continue) study ``name`` with its cells under ``out``; write its report to ``report_dir``.

    ``train_missing=False`` only reports the cells already finished. Returns ``{"rows": ..., "paths": ...}``.
    """
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    study = STUDIES[name]
    options = options or StudyOptions()
    cells = study.cells(options)
    report_dir = Path(report_dir or Path(out) / "reports")
    sync_results(out, report_dir)  # results committed beside a report count as done
    if train_missing:
        rows = run_cells(cells, out, progress=progress, desc=name)
    else:
        rows = labelled_results(cells, out)
    paths = {}
    if rows:
        sync_results(out, report_dir)
        paths = write_report(study, rows, report_dir, command)
    return {"rows": rows, "paths": paths, "cells": len({c.key for c in cells})}
