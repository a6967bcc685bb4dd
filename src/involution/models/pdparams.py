"""PaddlePaddle parameter files (``.pdparams``) read without PaddlePaddle, and without running their code.

``paddle.save(state_dict, path)`` writes one pickle (protocol 4 by default, 2 and 3 also occur) of a plain dict
``{structured_name: numpy.ndarray}`` whose last entry, ``'StructuredToParameterName@@'``, maps each name to
Paddle's internal one. Arrays are pickled the classic numpy way (``numpy.core.multiarray._reconstruct`` from numpy
1.x, ``numpy._core.multiarray._reconstruct`` from numpy 2, ``numpy.ndarray``, ``numpy.dtype``; protocol 2 adds
``_codecs.encode`` for the raw bytes).

:func:`read_pdparams` unpickles with exactly those globals allowed: a file whose pickle names anything else (say
``os.system``) is refused with an error naming the file and the global, before anything from it is called. Every
array's size is checked before numpy allocates it: an array's bytes are stored in the file, so one of more bytes
than the file has is refused at once (a 116-byte file can ask for 10^13 elements), as are arrays of Python objects
(numpy crashes on an object array whose pickled list is shorter than its shape) and data of another size.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Self

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


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that a parameter file never holds."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RefusedArray(pickle.UnpicklingError):
    """The pickle asks for an array no parameter file holds: larger than the file, of Python objects, or with data
    of another size than its shape's (refused before numpy allocates anything)."""


def _checked_nbytes(shape: Any, dtype: Any, limit: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, bytes)`` of the array a pickle asks for; :class:`RefusedArray` when it has more bytes than
    ``limit`` (the file's size: an array's data is stored in the file, so it cannot hold more)."""
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise RefusedArray(f"an array's shape must be a tuple of ints, got {type(shape).__name__}")
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, however large the claim
    if min(shape, default=0) < 0 or nbytes > limit:
        raise RefusedArray(f"an array of shape {shape} and dtype {dtype} ({nbytes} bytes) is more than the file's "
                           f"{limit} bytes can hold; nothing was allocated")
    return shape, dtype, nbytes


class _CheckedArray(np.ndarray):
    """The arrays the unpickler builds: their pickled state is checked against the file's size before numpy
    allocates anything (numpy allocates the shape a state names, and crashes on an object array's short list)."""

    limit = 0  # set per file by :class:`_ArrayUnpickler`

    def __new__(cls, shape: Any, dtype: Any = float) -> Self:
        """``ndarray(shape, dtype)``, however the pickle calls it (``_reconstruct``, REDUCE, NEWOBJ): checked."""
        _checked_nbytes(shape, dtype, cls.limit)
        return super().__new__(cls, shape, dtype)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise RefusedArray("an array's pickled state must be a tuple of 4 or 5 items")
        shape, dtype, _, data = state[-4:]
        _, dtype, nbytes = _checked_nbytes(shape, dtype, self.limit)
        if dtype.hasobject:
            raise RefusedArray(f"an array of Python objects (dtype {dtype}) holds no weights")
        if not isinstance(data, (bytes, bytearray, str)) or len(data) != nbytes:
            size = len(data) if isinstance(data, (bytes, bytearray, str)) else type(data).__name__
            raise RefusedArray(f"an array of shape {shape} and dtype {dtype} needs {nbytes} bytes of data, its "
                               f"pickle gives {size}")
        super().__setstate__(state)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays, strings, numbers and containers, and nothing else; arrays no
    larger than ``limit`` bytes (the file's size)."""

    def __init__(self, file: Any, limit: int) -> None:
        super().__init__(file, encoding="latin1")  # latin1: as paddle.load, so Python 2's protocol-2 bytes read
        array_type = type("_FileArray", (_CheckedArray,), {"limit": limit})

        def new_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            """``_reconstruct(ndarray, shape, dtype)``: pickles give shape ``(0,)``, then the state."""
            if subtype is not array_type:
                raise RefusedArray("_reconstruct is asked to build something other than a numpy array")
            return array_type(shape, dtype)

        self._globals = {
            ("numpy.core.multiarray", "_reconstruct"): new_array,  # numpy 1.x writers
            ("numpy._core.multiarray", "_reconstruct"): new_array,  # numpy 2
            ("numpy", "ndarray"): array_type,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, limit=os.fstat(f.fileno()).st_size).load()
    except RefusedGlobal as err:
        raise ValueError(
            f"{path}: refused to load: its pickle names {err.qualname}, which a PaddlePaddle parameter file never "
            "holds (only numpy arrays); nothing from the file was run"
        ) from None
    except RefusedArray as err:
        raise ValueError(f"{path}: refused to load: {err}") from None
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
