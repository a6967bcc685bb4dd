"""PaddlePaddle parameter files (``.pdparams``) read without PaddlePaddle, and without running their code.

``paddle.save(state_dict, path)`` writes one pickle (protocol 4 by default, 2 and 3 also occur) of a plain dict
``{structured_name: numpy.ndarray}`` whose last entry, ``'StructuredToParameterName@@'``, maps each name to
Paddle's internal one. Arrays are pickled the classic numpy way (``numpy.core.multiarray._reconstruct`` from numpy
1.x, ``numpy._core.multiarray._reconstruct`` from numpy 2, ``numpy.ndarray``, ``numpy.dtype``; protocol 2 adds
``_codecs.encode`` for the raw bytes).

:func:`read_pdparams` unpickles with exactly those globals allowed: a file whose pickle names anything else (say
``os.system``) is refused with an error naming the file and the global, before anything from it is called.
"""

from __future__ import annotations

import codecs
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

NAME_TABLE = "StructuredToParameterName@@"  # Paddle's internal names: no weights
_SPLIT_TABLE = "UnpackBigParamInfor@@"  # arrays over 4 GiB, split by protocols 2 and 3: never a RedNet
_NUMERIC = "biufc"  # numpy dtype kinds a weight can have: bool, (unsigned) integers, floats, complex


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes (latin-1 text); no other codec is reachable."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not an array's bytes")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a numpy array's pickle names, for numpy 1.x and 2 writers alike."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that a parameter file never holds."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, strings, numbers and containers, and nothing else."""

    _globals = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            # latin1: the encoding paddle.load uses, so protocol-2 files written by Python 2 read as bytes
            return _ArrayUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as err:
        raise ValueError(
            f"{path}: refused to load: its pickle names {err.qualname}, which a PaddlePaddle parameter file never "
            "holds (only numpy arrays); nothing from the file was run"
        ) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - damaged bytes can make the unpickler raise anything
        raise ValueError(
            f"{path}: not a readable PaddlePaddle .pdparams file: truncated or corrupt ({type(err).__name__})"
        ) from None


def _to_tensor(key: str, value: np.ndarray, path: Path) -> Tensor:
    if value.dtype.kind not in _NUMERIC:
        raise ValueError(f"{path}: entry {key!r} is an array of {value.dtype}, not numbers")
    return torch.from_numpy(np.array(value, copy=True, order="C"))  # own, writable, contiguous memory


def read_pdparams(path: str | os.PathLike) -> dict[str, Tensor]:
    """The arrays of a ``paddle.save``d state dict as CPU tensors, keys as stored (``layer1.0.bn1._mean`` ...).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a pickle that names any
    global besides numpy's array machinery (nothing is executed), for a damaged file, and for content that is no
    dict of numeric arrays. Entries that are not arrays are ignored with a warning.
    """
    path = Path(path)
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of arrays (paddle.save of a state dict), got {type(obj).__name__}")
    if _SPLIT_TABLE in obj:
        raise ValueError(f"{path}: holds arrays over 4 GiB split into slices ({_SPLIT_TABLE}); not supported")
    tensors = {str(k): _to_tensor(str(k), v, path) for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise ValueError(f"{path}: no arrays found (top-level keys: {sorted(map(str, obj))[:12]})")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray) and k != NAME_TABLE)
    if others:
        warnings.warn(f"{path}: ignoring {len(others)} entries that are not arrays: {others[:12]}", stacklevel=3)
    return tensors
