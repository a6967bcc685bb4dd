"""Checking an exported model against eager PyTorch: run it (onnxruntime, or the loaded ``torch.export``
program) on a random input and compare every output."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .onnx_file import require
from .shapes import random_input


@dataclass(frozen=True)
class ExportCheck:
    """The comparison of an exported model with eager PyTorch on one random input.

    ``input_shape``: the ``(N, C, H, W)`` input used; ``max_abs_error``: the largest absolute difference over all
    outputs; ``max_abs_value``: the largest absolute eager output (the scale of the error); ``runtime``: what ran
    the exported model (``"onnxruntime"`` or ``"torch.export"``).
    """

    input_shape: tuple[int, ...]
    max_abs_error: float
    max_abs_value: float
    runtime: str

    def __str__(self) -> str:
        return (
            f"{self.runtime} vs eager on input {tuple(self.input_shape)}: max abs error {self.max_abs_error:.2e} "
            f"(outputs up to {self.max_abs_value:.2e})"
        )


def _flat_outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__}")


def _compare(expected: Any, got: Sequence[Any], shape: Sequence[int], runtime: str) -> ExportCheck:
    ref = _flat_outputs(expected)
    if len(ref) != len(got):
        raise RuntimeError(f"{runtime} returned {len(got)} outputs, eager PyTorch {len(ref)}")
    err = val = 0.0
    for r, g in zip(ref, got):
        g = torch.as_tensor(g)
        if tuple(g.shape) != tuple(r.shape):
            raise RuntimeError(f"{runtime} output shape {tuple(g.shape)} differs from eager {tuple(r.shape)}")
        err = max(err, (g.float() - r.float()).abs().max().item())
        val = max(val, r.abs().max().item())
    return ExportCheck(tuple(int(s) for s in shape), err, val, runtime)


def assert_close(check: ExportCheck, rtol: float) -> ExportCheck:
    """``check`` itself when its error is within ``rtol`` of the output scale (at least 1); else RuntimeError."""
    if not check.max_abs_error <= rtol * max(1.0, check.max_abs_value):
        raise RuntimeError(f"exported model disagrees with eager PyTorch: {check} (tolerance {rtol:g} x scale)")
    return check


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for the ONNX file at ``path``; the involution custom-op library is registered
    when the file uses it (``onnx_ops="custom"``), built on first use."""
    require("onnxruntime", "running an ONNX file")
    import onnx
    import onnxruntime as ort

    from ...ops import onnxruntime_library

    proto = onnx.load(str(path), load_external_data=False)
    custom = any(o.domain == onnxruntime_library.DOMAIN for o in proto.opset_import)
    opts = onnxruntime_library.session_options(threads, register_library=custom)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(
    path: str | os.PathLike, model: nn.Module, shape: Sequence[int], threads: int | None = None
) -> ExportCheck:
    """Run the ONNX file at ``path`` in onnxruntime (CPU) on a random ``shape`` input and compare with ``model``."""
    session = onnx_session(path, threads)
    x = random_input(shape)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = model(x)
    return _compare(expected, got, shape, "onnxruntime")


def check_exported_program(path: str | os.PathLike, model: nn.Module, shape: Sequence[int]) -> ExportCheck:
    """Load the ``.pt2`` at ``path`` with ``torch.export.load`` and compare it with ``model`` on a random input."""
    program = torch.export.load(str(path))
    x = random_input(shape)
    with torch.inference_mode():
        got = program.module()(x)
        expected = model(x)
    return _compare(expected, _flat_outputs(got), shape, "torch.export")
