"""Writing an exported program as an ONNX file (involution lowered by :mod:`involution.ops.onnx`, a light graph
clean-up, readable input dimension names, ``onnx.checker``), and the optional packages ONNX needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .shapes import dim_names

INSTALL_HINT = "pip install 'involution[export]' (or: pip install onnx onnxscript onnxruntime)"


def require(module: str, what: str) -> None:
    """Raise an ``ImportError`` naming the pip install when ``module`` is not installed (``what`` needs it)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the '{module}' package, which is not installed: {INSTALL_HINT}")


def _rename_input_dims(proto: Any) -> None:
    """Give the input's symbolic dimensions readable names (batch, frames, height, width) wherever they appear
    (torch.export calls them s0, s1, ...)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(dims, dim_names(len(dims))) if new and d.dim_param}
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def write_onnx(
    program: torch.export.ExportedProgram, example: Tensor, out: Path, opset: int | None, onnx_ops: str
) -> None:
    """Convert ``program`` (traced on ``example``) to ONNX and save it at ``out``, checked by ``onnx.checker``
    (``onnx_ops``: as :func:`involution.ops.onnx.onnx_translation_table` takes it)."""
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    import onnx
    import onnxscript.optimizer

    from ...ops.onnx import onnx_decompositions, onnx_translation_table

    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    onnx_program = torch.onnx.export(
        program.run_decompositions(onnx_decompositions(onnx_ops)),
        (example,),
        dynamo=True,
        custom_translation_table=onnx_translation_table(onnx_ops),
        input_names=["input"],
        # The exporter's own optimizer runs pattern rewrites whose cost grows steeply with the graph (minutes for
        # a RedNet-50, whose involutions are 49 taps each); folding constants and dropping dead nodes is what
        # onnxruntime needs from it (it fuses Conv + BatchNorm itself), and takes well under a second.
        optimize=False,
        verbose=False,
        **kwargs,
    )
    assert onnx_program is not None  # (None only without dynamo=True, for a file written by the exporter itself)
    model = onnx_program.model
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    proto = onnx_program.model_proto
    _rename_input_dims(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out))
