"""OpenVINO: an exported program written as an OpenVINO IR whose involutions are the op of this package's OpenVINO
extension (:mod:`involution.ops.openvino_library`), and such a file compiled for the CPU with the extension loaded.

The IR is two files: ``NAME.xml`` (the graph; the path given and returned) and ``NAME.bin`` beside it (the weights,
kept in float32). It is made from the ONNX form with one ``involution::Involution2d`` (``Involution3d``) node per layer, which OpenVINO
reads through the extension's ONNX conversion; batch, height and width stay dynamic as in the ONNX file.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .onnx_file import require, write_onnx
from .shapes import random_input
from .verify import ExportCheck, _compare

#: ``openvino_model``'s precisions: OpenVINO's ``INFERENCE_PRECISION_HINT`` values.
PRECISIONS = ("f32", "bf16")
OPENVINO_HINT = "pip install 'involution[openvino]' (or: pip install openvino)"
SUFFIX = ".xml"


def require_openvino(what: str) -> None:
    """Raise an ``ImportError`` naming the pip install when ``openvino`` is not installed (``what`` needs it)."""
    if importlib.util.find_spec("openvino") is None:
        raise ImportError(f"{what} needs the 'openvino' package, which is not installed: {OPENVINO_HINT}")


def weights_file(xml: Path) -> Path:
    """The ``.bin`` that holds the weights of the IR ``xml``."""
    return xml.with_suffix(".bin")


def prepare_openvino_export(out: Path) -> None:
    """Refuse an IR export that cannot succeed, before the (slow) tracing: ``out`` not ending in ``.xml``, a
    missing package, or an extension that cannot be built.

    Raises:
        ValueError: ``out`` does not end in ``.xml``.
        ImportError: openvino, onnx or onnxscript is not installed (naming the pip install).
        RuntimeError: the extension cannot be built (saying why).
    """
    if out.suffix != SUFFIX:
        raise ValueError(f"an OpenVINO export is an IR: --out must end in {SUFFIX} (its weights go to the .bin "
                         f"beside it), got {str(out)!r}")
    require_openvino("OpenVINO export")
    require("onnx", "OpenVINO export")
    require("onnxscript", "OpenVINO export")
    from ...ops.openvino_library import library_path

    library_path()


def _core() -> Any:
    """An ``openvino.Core`` with the involution extension loaded (built on first use)."""
    require_openvino("running an OpenVINO model")
    import openvino as ov

    from ...ops.openvino_library import add_extension

    return add_extension(ov.Core())


def write_openvino(program: torch.export.ExportedProgram, example: Tensor, out: Path, opset: int | None) -> None:
    """``program`` (traced on ``example``) as the IR ``out`` (``.xml``) and :func:`weights_file` beside it, through
    a temporary ONNX file with the custom node, removed afterwards. Weights stay float32 (not compressed to f16)."""
    import openvino as ov

    onnx_tmp = out.with_suffix(".onnx")
    try:
        write_onnx(program, example, onnx_tmp, opset, "custom")
        ov.save_model(_core().read_model(str(onnx_tmp)), str(out), compress_to_fp16=False)
    finally:
        onnx_tmp.unlink(missing_ok=True)


def openvino_model(path: str | os.PathLike, precision: str = "f32", threads: int | None = None) -> Any:
    """The OpenVINO model at ``path`` (an IR ``.xml`` from ``export_model(..., format="openvino")``, or an ONNX
    file, with custom involution nodes or standard operators) compiled for the CPU with the involution extension
    loaded: an ``openvino.CompiledModel``; call it with an ``(N, C, H, W)`` float32 array.

    Args:
        precision: ``"f32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``): in bf16, the layers
            OpenVINO runs in bf16 (convolutions ...) do so on CPUs where it supports bf16 ("BF16" among the CPU's
            ``OPTIMIZATION_CAPABILITIES``: AVX-512 and later, fast with native bf16 instructions); elsewhere
            OpenVINO ignores the hint and runs f32. The involutions then run in bf16 too: bf16 input, kernel and
            output, the sums accumulated in float32, as PyTorch's bf16 autocast computes them.
        threads: inference threads (``INFERENCE_NUM_THREADS``; default OpenVINO's: one per core). The extension's
            kernel runs on the same threads.

    Raises:
        ValueError: unknown precision, or ``threads`` < 1.
        FileNotFoundError: no file at ``path``.
        ImportError: openvino is not installed. RuntimeError: the extension cannot be built.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for OpenVINO's default), got {threads}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no OpenVINO model at {str(path)!r} (an .xml IR or an .onnx file)")
    core = _core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    model = core.read_model(str(path))
    if precision == "bf16" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        _involutions_in_bf16(model)
    return core.compile_model(model, "CPU", config)


def _involutions_in_bf16(model: Any) -> None:
    """Give every involution node of ``model`` bf16 inputs and output (``Convert`` nodes around it, in place).

    The CPU plugin's bf16 hint reaches the layers it knows; an extension op keeps the graph's float32, so each
    involution would cost a bf16 -> f32 conversion of its input and kernel and one back of its output, and run
    float32 sums of bf16-rounded values at twice the bytes. With the Converts the plugin merges them into the
    reorders it needs anyway, and the op's kernel reads and writes bf16 (accumulating in float32).
    """
    import openvino as ov
    from openvino import opset13

    from ...ops.openvino_library import OP_TYPE, OP_TYPE_3D

    for node in model.get_ordered_ops():
        if node.get_type_name() not in (OP_TYPE, OP_TYPE_3D):
            continue
        for port in node.inputs():
            port.replace_source_output(opset13.convert(port.get_source_output(), ov.Type.bf16).output(0))
        node.validate_and_infer_types()
        users = list(node.output(0).get_target_inputs())
        back = opset13.convert(node.output(0), ov.Type.f32).output(0)
        for user in users:
            user.replace_source_output(back)
    model.validate_nodes_and_infer_types()


def check_openvino(
    path: str | os.PathLike, model: nn.Module, shape: Sequence[int], threads: int | None = None
) -> ExportCheck:
    """Run the OpenVINO model at ``path`` (float32, CPU) on a random ``shape`` input and compare with ``model``."""
    compiled = openvino_model(path, "f32", threads)
    x = random_input(shape)
    got = compiled(x.numpy()).to_tuple()
    with torch.inference_mode():
        expected = model(x)
    return _compare(expected, list(got), shape, "OpenVINO")
