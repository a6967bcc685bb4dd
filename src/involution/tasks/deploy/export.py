"""``export_model``: trace a model with ``torch.export``, write it as ONNX, a ``.pt2`` program or an OpenVINO IR,
check it against eager PyTorch, and only then put it at the destination."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._atomic import io_failure, write_error
from ...layers.fuse import fuse_conv_bn_
from ..engine.run_dir import resolve_checkpoint
from .destination import EXTENSIONS, FORMATS, check_destination
from .loading import load_export_model
from .onnx_file import INSTALL_HINT, require, write_onnx
from .openvino_file import check_openvino, prepare_openvino_export, weights_file, write_openvino
from .shapes import check_shape, dim_names, dynamic_dims, dynamic_shapes, example_shape, random_input
from .verify import assert_close, check_exported_program, check_onnx

__all__ = ["FORMATS", "export_model"]
_SUFFIXES = {format: suffix for suffix, format in EXTENSIONS.items()}


def export_model(
    model_or_name: nn.Module | str | None, out: str | os.PathLike, format: str | None = None,
    checkpoint: str | os.PathLike | None = None, input_size: Sequence[int] | None = None, batch_size: int = 2,
    dynamic: bool = True, num_classes: int | None = None, verify: bool = True, rtol: float = 1e-4,
    opset: int | None = None, onnx_ops: str = "standard", fuse: bool = True, log: Callable[[str], None] | None = None,
    **model_kwargs: Any,
) -> Path:
    """Export a model for deployment and check the result; returns the path written.

    Args:
        model_or_name: a registry name (``"rednet50"``), a module, or None: the model ``checkpoint`` records
            (a run directory, or a file this library wrote). A name contradicting the recorded one is refused.
        out: the file to write; its folder is created. It is written under a temporary name beside it, checked
            (``verify``), then renamed: a failed export leaves ``out`` as it was. An existing ``out`` is replaced
            only if it is an export in the same format: never a checkpoint, nor any other file.
        format: ``"onnx"``, ``"exported-program"`` or ``"openvino"`` (an OpenVINO IR whose involutions are the op
            of :mod:`involution.ops.openvino_library`, its weights in the ``.bin`` beside the ``.xml``; run it with
            :func:`openvino_model`); default: the one ``out``'s extension names (``.onnx``, ``.pt2``, ``.xml``).
            Given, it must agree with such an extension.
        checkpoint: weights to load first: a run directory (its best weights), this library's safetensors or
            training state, an official mmcls ``.pth``. This library's files rebuild their recorded model.
        input_size: the example input's ``(C, H, W)`` or ``(H, W)`` (a clip model's ``(C, T, H, W)`` or ``(T, H,
            W)``); default ``model.pretrained_cfg["input_size"]``:
            for a run's checkpoint, the image size it trained at.
        batch_size: the example's batch (default 2: torch.export specialises a batch of 1 to a constant).
        dynamic: batch, height and width dynamic (default); else fixed to the example's shape. Height and width
            are fixed anyway when the example makes a feature map 1 pixel wide, and the batch when it is 1
            (torch.export would specialise the program to those sizes); the log says so.
        num_classes: classifier outputs (a name only; default the recorded count, else the model's 1000; 0:
            pooled features).
        verify: run the exported model (onnxruntime for ONNX, if installed; OpenVINO for an IR; the loaded
            program otherwise) on a
            random input of another batch and size (if dynamic) and compare with eager PyTorch.
        rtol: the largest accepted max abs error, relative to the largest output (at least 1).
        opset: ONNX opset, at least 18 (default: the exporter's).
        onnx_ops: how involution is written in ONNX: ``"standard"`` operators (runs in any ONNX runtime) or one
            ``"custom"`` ``involution::Involution2d`` node per layer (onnxruntime with the library of
            :mod:`involution.ops.onnxruntime_library`, which ``check_onnx``/``onnx_session`` load). An OpenVINO IR
            always holds the extension's op.
        fuse: fold every BatchNorm that follows a convolution into it before exporting (default; a copy is
            folded, the check compares with the unfolded model).
        log: called with one line per step (e.g. ``print``); silent by default.
        **model_kwargs: passed to ``create_model`` with a name (``features_only=True``, ``width=0.5`` ...).

    Raises:
        ValueError: unknown format or model name, bad ``input_size``; no format and an extension that names none,
            or a format that contradicts it; ``out`` has a checkpoint's extension (``.pt``, ``.pth``,
            ``.safetensors``, ...), is the ``checkpoint`` file itself, or is an existing file other than an export
            in the same format; an OpenVINO ``out`` not ending in ``.xml``.
        IsADirectoryError: ``out`` is a directory.
        involution._atomic.WriteError: ``out`` cannot be written (a file where a folder should be, a folder that
            refuses new files, a full disk), naming ``out`` and the cause.
        FileNotFoundError: missing checkpoint (or a folder without one).
        ImportError: onnx / onnxscript (/ openvino) missing for ONNX (OpenVINO) export (naming the pip install).
        RuntimeError: the exported model disagrees with eager PyTorch; a runtime library cannot be built.
    """
    out = Path(out)
    checkpoint = None if checkpoint is None else resolve_checkpoint(checkpoint)  # a run directory: its best weights
    format = check_destination(out, format, checkpoint)
    _check_request(format, opset, onnx_ops, verify)
    say = log or (lambda _msg: None)
    if format == "openvino":
        prepare_openvino_export(out)
    model = load_export_model(model_or_name, checkpoint, num_classes, **model_kwargs)
    example = random_input(example_shape(model, input_size, batch_size))
    dims = dynamic_dims(model, example, dynamic, say)
    program = _trace(model, example, dims, fuse, say)
    return _write_checked(program, model, example, dims, out, format, verify, rtol, opset, onnx_ops, say)


def _check_request(format: str, opset: int | None, onnx_ops: str, verify: bool) -> None:
    """Refuse a bad opset or ``onnx_ops``, or missing packages, before the (slow) tracing."""
    if opset is not None and opset < 18:
        raise ValueError(f"opset {opset} is too old: the involution lowering uses opset 18 operators; use >= 18")
    if format != "onnx":
        return
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    from ...ops.onnx import check_onnx_ops

    check_onnx_ops(onnx_ops)
    if onnx_ops == "custom" and verify and importlib.util.find_spec("onnxruntime") is not None:
        from ...ops.onnxruntime_library import library_path

        library_path()  # the check needs the custom-op library: build it (or say why not) before tracing


def _trace(
    model: nn.Module, example: Tensor, dims: tuple[int, ...], fuse: bool, say: Callable[[str], None]
) -> torch.export.ExportedProgram:
    """``model`` (a BatchNorm-folded copy if ``fuse``) traced by ``torch.export`` with ``dims`` dynamic."""
    traced = model
    if fuse:
        traced = copy.deepcopy(model)
        say(f"folded {fuse_conv_bn_(traced)} BatchNorms into the convolutions before them")
    shape = tuple(example.shape)
    say(f"tracing {getattr(model, 'model_name', type(model).__name__)} with torch.export on input {shape}"
        + (f" (dynamic {', '.join(str(dim_names(example.dim())[d]) for d in dims)})" if dims else " (static shape)"))
    with torch.inference_mode(False), torch.no_grad():
        return torch.export.export(traced, (example,), dynamic_shapes=dynamic_shapes(dims))


def _write_checked(
    program: torch.export.ExportedProgram, model: nn.Module, example: Tensor, dims: tuple[int, ...], out: Path,
    format: str, verify: bool, rtol: float, opset: int | None, onnx_ops: str, say: Callable[[str], None],
) -> Path:
    """Write ``program`` beside ``out`` under a temporary name, check it there against ``model``, and only then
    rename it to ``out``: a failed export (or a crash) leaves ``out`` as it was and no temporary file."""
    # torch.export.save wants the .pt2 extension kept (it warns otherwise)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{_SUFFIXES[format]}")
    weights = [(weights_file(tmp), weights_file(out))] if format == "openvino" else []  # an IR's .bin
    try:
        what = _write(program, example, tmp, out, format, opset, onnx_ops)
        size = f"{sum(p.stat().st_size for p in (tmp, *(w for w, _ in weights))) / 2**20:.1f} MiB"
        checked = verify and (format != "onnx" or importlib.util.find_spec("onnxruntime") is not None)
        if verify and not checked:
            say(f"onnxruntime not installed, run check skipped ({INSTALL_HINT})")
        if checked:
            say(f"exported ({size}), {what}; comparing with eager PyTorch before writing {out}")
            check = {"onnx": check_onnx, "openvino": check_openvino}.get(format, check_exported_program)
            say(str(assert_close(check(tmp, model, check_shape(example.shape, dims)), rtol)))
        try:
            for written, final in weights:  # the weights first: the graph file names the finished export
                os.replace(written, final)
            os.replace(tmp, out)
        except OSError as err:
            raise write_error(out, err) from err
    finally:
        with contextlib.suppress(OSError):  # e.g. ENOTDIR: the error being raised says more
            tmp.unlink(missing_ok=True)
            for written, _ in weights:
                written.unlink(missing_ok=True)
    if not checked:
        say(f"wrote {out} ({size}), {what}")
    return out


def _write(
    program: torch.export.ExportedProgram, example: Tensor, tmp: Path, out: Path, format: str, opset: int | None,
    onnx_ops: str,
) -> str:
    """Write ``program`` at ``tmp`` in ``format`` (creating ``out``'s folder); returns what was checked. A failure
    to write is a one-line :class:`~involution._atomic.WriteError` naming ``out`` and the cause, not the writer's
    ("[enforce fail at inline_container.cc ...]", or an errno naming the temporary file)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if format == "onnx":
            write_onnx(program, example, tmp, opset, onnx_ops)
            return "onnx.checker passed"
        if format == "openvino":
            write_openvino(program, example, tmp, opset)
            return f"OpenVINO IR, weights in {weights_file(out).name}, run it with openvino_model"
        try:
            torch.export.save(program, str(tmp))
        except RuntimeError as err:  # torch's archive writer: a full disk, a folder that refuses the file ...
            raise io_failure(err) from err
        return "load it with torch.export.load after `import involution`"
    except OSError as err:
        raise write_error(out, err) from err
