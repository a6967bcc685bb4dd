"""Training checkpoints: everything a resumed run needs to continue exactly where it stopped.

A training checkpoint (``last.pt``) is a ``torch.save`` dict made only of tensors, numbers, strings and
containers, so it loads with ``torch.load(weights_only=True)``: every RNG state is stored as tensors (numpy's and
Python's included). Files are written atomically: an interrupted save never damages the previous checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..._atomic import atomic_path, io_failure
from ...models.checkpoint import read_torch_file

FORMAT = "involution-train"
FORMAT_VERSION = 1
# What every training checkpoint holds (tasks add their own entries, e.g. classification's data_spec).
REQUIRED_KEYS = ("model_name", "model_kwargs", "model", "optimizer", "scheduler", "scaler", "rng", "epoch",
                 "step_in_epoch", "global_step", "sums", "history", "best", "best_epoch", "elapsed")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip the ``_orig_mod.`` / ``module.`` prefixes that wrappers add to every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


# -- RNG states as tensors ----------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and numbers."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # the MT19937 legacy state: never the dict form
    kind, keys, pos, has_gauss, cached = legacy
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files --------------------------------------------------------------------------------------------------------


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (temporary file in the same folder, then rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as err:  # e.g. a full disk: "enforce fail at inline_container.cc ... unexpected pos"
            raise io_failure(err) from err
    return Path(path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint; ``ValueError`` naming the file if it is corrupt or not a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} (was the run started with this --out?)")
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a training checkpoint of this library (no format={FORMAT!r} entry)")
    version = state.get("format_version", 0)
    if not isinstance(version, int):
        raise ValueError(f"{path}: not a training checkpoint of this library (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer version (format {version}); upgrade involution")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path}: an incomplete training checkpoint (no {', '.join(missing)}): damaged, or written "
                         "by another program")
    return state
