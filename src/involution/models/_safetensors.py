"""safetensors I/O for checkpoints: the ``safetensors`` package, with errors that name the file."""

from __future__ import annotations

import os
from collections.abc import Mapping

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .._atomic import io_failure


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` with string ``metadata`` to ``path`` (not atomically: callers write a temp file first)."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    try:
        save_file(cpu, os.fspath(path), metadata={str(k): str(v) for k, v in metadata.items()})
    except SafetensorError as err:  # not an OSError: atomic_path names the file and the cause from this one
        raise io_failure(err) from err


def read_safetensors(
    path: str | os.PathLike, metadata_only: bool = False
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read every tensor (none with ``metadata_only``) and the metadata of ``path``; ValueError naming the file if
    it is truncated or corrupt."""
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {} if metadata_only else {name: f.get_tensor(name) for name in f.keys()}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the reader raise, one named error
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return tensors, metadata
