"""Read and write the safetensors file format without the ``safetensors`` package.

The format: an 8-byte little-endian header length N, N bytes of JSON header (``{"__metadata__": {str: str},
name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}``, padded with spaces), then the raw
little-endian tensor bytes, offsets counted from the end of the header. Files written here read with the
``safetensors`` package and the other way round. Every inconsistency raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024

if sys.byteorder != "little":  # pragma: no cover - every supported machine is little-endian
    raise ImportError("the safetensors reader/writer here assumes a little-endian machine")


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (names in sorted order) with string ``metadata`` to ``path`` (not atomically)."""
    header: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
        if t.dtype not in _NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be stored in safetensors here")
        data = _tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in blobs:
            f.write(data)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``. Truncated or inconsistent files raise ``ValueError``."""
    path = Path(path)
    data = bytearray(path.read_bytes())  # writable, so torch.frombuffer does not warn

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file ({why}); the file may be truncated or corrupt")

    if len(data) < 8:
        raise bad(f"only {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise bad(f"header length {n} does not fit a file of {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    buf = memoryview(data)[8 + n :]
    tensors: dict[str, Tensor] = {}
    spans = []
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"entry {name!r} is malformed or has an unsupported dtype: {entry!r}") from None
        numel = 1
        for s in shape:
            if s < 0:
                raise bad(f"entry {name!r} has a negative size")
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(buf) or end - begin != numel * itemsize:
            raise bad(f"entry {name!r} ({entry['dtype']} {shape}) has data offsets {begin}..{end} "
                      f"outside the {len(buf)} data bytes or of the wrong length")
        spans.append((begin, end))
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(buf, dtype=torch.uint8, count=end - begin, offset=begin).clone()
            tensors[name] = flat.view(dtype).reshape(shape)
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise bad("tensor data overlaps or leaves gaps")
        covered = end
    if covered != len(buf):
        raise bad(f"{len(buf) - covered} trailing bytes after the tensor data")
    return tensors, metadata
