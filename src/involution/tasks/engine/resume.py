"""Resuming a run: its saved configuration, and which options a resumed run may change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from .run_config import RunConfig

C = TypeVar("C", bound=RunConfig)

# Options a resumed run may change; anything else must match the checkpoint (exactness, and no silent mix-ups).
RESUME_MUTABLE = ("workers", "threads", "log_every", "eval_every", "device")


def resume_values(run_dir: str | os.PathLike, saved: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The saved config values of ``run_dir`` with ``overrides`` applied; refuses changes that break resumption
    (``epochs`` may grow or shrink: the schedule is re-planned from there on)."""
    values = dict(saved)
    changed = {k: v for k, v in (overrides or {}).items() if values.get(k) != v}
    if "epochs" in changed:
        values["epochs"] = changed.pop("epochs")
    refused = {k: (values.get(k), v) for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        what = "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"cannot resume {run_dir} with different settings ({what}); start a new run with --out")
    values.update(changed)
    return values


def saved_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {run_dir} a run directory?)")
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot resume: {path} is not a JSON file ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"cannot resume: {path} does not hold a run's configuration (a JSON object)")  # noqa: TRY004
    return values


def resume_config(config_class: type[C], run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None) -> C:
    """The ``config_class`` config of the run in ``run_dir`` with ``overrides`` applied; refuses changes that
    break resumption."""
    saved = config_class.from_dict(saved_config(run_dir)).to_dict()
    return config_class.from_dict(resume_values(run_dir, saved, overrides))
