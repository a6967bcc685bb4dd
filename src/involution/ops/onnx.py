"""ONNX lowering of ``involution::involution2d`` for the ``torch.onnx.export(..., dynamo=True)`` exporter.

Two forms (``onnx_translation_table(onnx_ops=...)``):

* ``"standard"``: standard ONNX operators only (:func:`involution2d_onnx`, below); runs in any ONNX runtime.
* ``"custom"``: one ``involution::Involution2d`` node per layer (:func:`involution2d_onnx_custom`; a 3-D layer,
  ``involution::Involution3d``), which onnxruntime runs with this package's C++ custom-op library
  (:mod:`involution.ops.onnxruntime_library`); faster than the standard form (docs/benchmarks.md), but onnxruntime
  only.

The CPU/GPU kernels behind the op are not ONNX, so a portable file needs the op rewritten in standard ONNX
operators. :func:`involution2d_onnx` does it as a sum over the Kh*Kw taps, grouped by kernel column, memory-light
(no Kh*Kw-times unfold of the input):

* the input ``(N, C, H, W)`` is viewed as ``(N, G, C/G, H, W)`` and zero-padded once;
* the weight ``(N, G, Kh, Kw, Ho, Wo)`` is viewed as ``(N, G, Kh*Kw, Ho, Wo)`` and split into its taps with one
  ``Split`` node, each ``(N, G, 1, Ho, Wo)``, which broadcasts over the C/G channels of its group;
* per kernel column v, one ``Slice`` takes the column-shifted (strided) copy of the padded input
  ``(N, G, C/G, Hp, Wo)``; each of the column's Kh taps ``Gather``s its Ho rows from it (a ``Range`` of row
  indices per kernel row, shared by the columns), multiplies them by its weight (``Mul``) and adds the product to
  the running total (``Add``).

At most one column copy (the input's size), one product and the running total (the output's size) are alive at
once. N, H and W stay symbolic (dynamic batch and image size); C, G, Kh and Kw are read from the traced shapes.

The other formulations tried, and their timings, are in docs/benchmarks.md ("Deployment").

Usage::

    from involution.ops.onnx import onnx_translation_table
    torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=onnx_translation_table())

:func:`involution.tasks.deploy.export_model` does this (and the checks) for a whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import torch

from .onnxruntime_library import DOMAIN, OP_TYPE, OP_TYPE_3D

try:
    import onnx.defs
    from onnxscript import opset18 as _op
    from onnxscript.values import Opset
except ImportError as exc:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError(
        "involution.ops.onnx needs the 'onnxscript' package (and 'onnx' to export): "
        "pip install 'involution[export]' (or: pip install onnx onnxscript onnxruntime)"
    ) from exc

__all__ = [
    "ONNX_OPS",
    "check_onnx_ops",
    "involution2d_onnx",
    "involution2d_onnx_custom",
    "involution3d_onnx_custom",
    "onnx_decompositions",
    "onnx_translation_table",
]

# How the op is written in ONNX: "standard" operators only (runs anywhere), or one "custom" node that onnxruntime
# runs with the library of involution.ops.onnxruntime_library.
ONNX_OPS = ("standard", "custom")


def _register_custom_schema(op_type: str, axes: str) -> None:
    """Make ``involution::<op_type>`` known to onnx (and so to onnxscript and onnx.checker): its inputs, output and
    attributes, as ``ops/csrc/involution_ort.cpp`` implements them. ``axes``: the spatial axes, "hw" or "dhw"."""
    if onnx.defs.has(op_type, 1, DOMAIN):
        return
    spatial = ", ".join(axes.upper())
    kernel, out = ", ".join(f"K{a}" for a in axes), ", ".join(f"{a.upper()}o" for a in axes)
    schema = onnx.defs.OpSchema(
        op_type,
        DOMAIN,
        1,
        doc=f"Involution (Li et al., CVPR 2021) over ({spatial}): each output position's kernel ({kernel}) of group "
        "g = c // (C/G) weighs the zero-padded window its channel reads.",
        inputs=[
            onnx.defs.OpSchema.FormalParameter("X", "T", f"features (N, C, {spatial})"),
            onnx.defs.OpSchema.FormalParameter("W", "T", f"kernels (N, G, {kernel}, {out})"),
        ],
        outputs=[onnx.defs.OpSchema.FormalParameter("Y", "T", f"(N, C, {out})")],
        type_constraints=[("T", ["tensor(float)"], "float32 only")],
        attributes=[
            onnx.defs.OpSchema.Attribute(name, onnx.defs.OpSchema.AttrType.INTS, f"{name} ({', '.join(axes)})")
            for name in ("strides", "pads", "dilations")
        ],
    )
    onnx.defs.register_schema(schema)


_register_custom_schema(OP_TYPE, "hw")
_register_custom_schema(OP_TYPE_3D, "dhw")
# The custom node's domain (ops/csrc/involution_ort.cpp registers the same).
_CUSTOM = Opset(DOMAIN, 1)

# Slice end meaning "to the end of the axis" (ONNX clamps it to the axis size).
_TO_END = 2**62


def _ints(values: Sequence[int]) -> Any:
    """A constant 1-D int64 tensor."""
    return _op.Constant(value_ints=[int(v) for v in values])


def _static_dim(value: Any, axis: int, what: str) -> int:
    dim = value.shape[axis] if value.shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(
            f"involution2d ONNX lowering: {what} (axis {axis}) must have a static size when exporting, got {dim!r}; "
            "only the batch and spatial dimensions may be dynamic"
        )
    return dim


def involution2d_onnx(
    input: Any, weight: Any, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Any:
    """Standard-ONNX translation of ``torch.ops.involution.involution2d.default`` (onnxscript, traced).

    Args:
        input: ``(N, C, H, W)`` features; C static, N/H/W may be symbolic.
        weight: ``(N, G, Kh, Kw, Ho, Wo)`` kernels; G, Kh, Kw static.
        stride, padding, dilation: ``(h, w)`` pairs of ints (the op's schema).

    Returns:
        ``(N, C, Ho, Wo)``, the same values as the op:
        ``out[n, c, i, j] = sum_{u,v} weight[n, c // (C/G), u, v, i, j] * input[n, c, i*s - p + u*d, j*s - p + v*d]``.
    """
    (sh, sw), (ph, pw), (dh, dw) = (tuple(int(v) for v in p) for p in (stride, padding, dilation))
    channels = _static_dim(input, 1, "the input's channels C")
    groups = _static_dim(weight, 1, "the weight's groups G")
    kh = _static_dim(weight, 2, "the weight's kernel height Kh")
    kw = _static_dim(weight, 3, "the weight's kernel width Kw")
    if channels % groups != 0:
        raise ValueError(f"involution2d ONNX lowering: C={channels} is not a multiple of G={groups}")

    batch = _op.Shape(input, start=0, end=1)
    in_hw = _op.Shape(input, start=2, end=4)
    out_hw = _op.Shape(weight, start=4, end=6)
    # (N, C, H, W) -> (N, G, C/G, H, W): each group's weight then broadcasts over its channels.
    x = _op.Reshape(input, _op.Concat(batch, _ints([groups, channels // groups]), in_hw, axis=0))
    if ph or pw:
        x = _op.Pad(x, _ints([0, 0, 0, ph, pw, 0, 0, 0, ph, pw]))
    # (N, G, Kh, Kw, Ho, Wo) -> (N, G, Kh*Kw, Ho, Wo)
    w = _op.Reshape(weight, _op.Concat(batch, _ints([groups, kh * kw]), out_hw, axis=0))
    return _aggregate(x, w, batch, out_hw, channels, (kh, kw), (sh, sw), (dh, dw))


def _aggregate(
    x: Any,
    w: Any,
    batch: Any,
    out_hw: Any,
    channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dil: tuple[int, int],
) -> Any:
    """``sum_{u,v} window(u, v) * weight(u, v)`` over the padded input ``x`` (N, G, C/G, Hp, Wp) and the kernels
    ``w`` (N, G, Kh*Kw, Ho, Wo), grouped by kernel column v (see the module docstring): one Slice per column
    (``x[..., v*dw :: sw]``, (N, G, C/G, Hp, Wo)), then per tap a Gather of its rows ``u*dh + i*sh``, a Mul by its
    weight and an Add to the total: onnxruntime runs Gather on all its threads but Slice on one, so one Slice per
    column and a Gather per tap beat a Slice per tap (docs/benchmarks.md).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dil
    if sh > 1 or sw > 1:
        # Crop the padded input to exactly what the last tap reads, so that every column's window ends at a
        # constant offset from the end. With stride 1 the padded input is already that size.
        last = _op.Mul(_op.Sub(out_hw, _ints([1, 1])), _ints([sh, sw]))  # the last output's first input row/col
        used = _op.Add(last, _ints([1 + dh * (kh - 1), 1 + dw * (kw - 1)]))
        x = _op.Slice(x, _ints([0, 0]), used, _ints([3, 4]))
    taps = _op.Split(w, axis=2, num_outputs=kh * kw) if kh * kw > 1 else [w]  # (N, G, 1, Ho, Wo) each
    rows_span = _op.Mul(_op.Squeeze(_op.Slice(out_hw, _ints([0]), _ints([1]))), _op.Constant(value_int=sh))
    rows = [  # input rows read by kernel row u: u*dh + i*sh for i < Ho
        _op.Range(_op.Constant(value_int=u * dh), _op.Add(rows_span, _op.Constant(value_int=u * dh)),
                  _op.Constant(value_int=sh))
        for u in range(kh)
    ]
    acc = None
    for v in range(kw):
        end = -(dw * (kw - 1 - v)) or _TO_END
        column = _op.Slice(x, _ints([v * dw]), _ints([end]), _ints([4]), _ints([sw]))  # (N, G, C/G, Hp, Wo)
        for u in range(kh):
            term = _op.Mul(_op.Gather(column, rows[u], axis=3), taps[u * kw + v])
            acc = term if acc is None else _op.Add(acc, term)
    assert acc is not None  # a kernel has at least one tap
    return _op.Reshape(acc, _op.Concat(batch, _ints([channels]), out_hw, axis=0))


def involution2d_onnx_custom(
    input: Any, weight: Any, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Any:
    """One ``involution::Involution2d`` node (same inputs, output and attributes as the op; see
    ``ops/csrc/involution_ort.cpp``). Needs the custom-op library in onnxruntime; not portable to other runtimes."""
    return _CUSTOM.Involution2d(  # OP_TYPE
        input, weight, strides=[int(v) for v in stride], pads=[int(v) for v in padding],
        dilations=[int(v) for v in dilation],
    )


def involution3d_onnx_custom(
    input: Any, weight: Any, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Any:
    """One ``involution::Involution3d`` node: ``(N, C, D, H, W)`` features and ``(N, G, Kd, Kh, Kw, Do, Ho, Wo)``
    kernels to ``(N, C, Do, Ho, Wo)``, attributes as the op's arguments; onnxruntime with the custom-op library."""
    return _CUSTOM.Involution3d(  # OP_TYPE_3D
        input, weight, strides=[int(v) for v in stride], pads=[int(v) for v in padding],
        dilations=[int(v) for v in dilation],
    )


def check_onnx_ops(onnx_ops: str) -> None:
    """Raise ValueError naming the choices unless ``onnx_ops`` is one of :data:`ONNX_OPS`."""
    if onnx_ops not in ONNX_OPS:
        raise ValueError(f"unknown onnx_ops {onnx_ops!r}; choose one of {', '.join(ONNX_OPS)}")


class _ConvAttributes(TypedDict):
    """The attributes of the ``Conv`` node :func:`conv3d_onnx` writes."""

    strides: list[int]
    pads: list[int]
    dilations: list[int]
    group: int


def conv3d_onnx(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    dilation: Sequence[int] = (1, 1, 1),
    groups: int = 1,
) -> Any:
    """``aten.conv3d`` -> one ``Conv`` node. onnxscript 0.7's own translation gives a missing bias the shape
    ``(C_out, 2)``, which onnxruntime refuses, so every bias-free ``nn.Conv3d`` (Involution3d's kernel generator
    among them) failed to run once exported."""
    pads = [int(v) for v in padding] * 2
    attrs: _ConvAttributes = {"strides": [int(v) for v in stride], "pads": pads,
                              "dilations": [int(v) for v in dilation], "group": int(groups)}
    if bias is None:
        return _op.Conv(input, weight, **attrs)
    return _op.Conv(input, weight, bias, **attrs)


def _involution3d_decomposition(input, weight, stride, padding, dilation):
    """``involution::involution3d`` as 2-D ops (summed over depth taps), each then lowered by the table below."""
    from ._depth_taps import depth_tap_sum

    return depth_tap_sum(input, weight, list(stride), list(padding), list(dilation), in_place=False).to(input.dtype)


def onnx_decompositions(onnx_ops: str = "standard") -> dict[Callable[..., torch.Tensor], Callable[..., Any]]:
    """What an exported program must be decomposed with before ONNX (``ExportedProgram.run_decompositions``): for
    the standard form, the 3-D op as the 2-D op's depth taps, each then lowered by :func:`onnx_translation_table`
    (the custom form has a node of its own for it). Applied to the program being exported only; torch's tables are
    not touched."""
    from . import _library3d  # noqa: F401  (defines torch.ops.involution.involution3d)

    check_onnx_ops(onnx_ops)
    if onnx_ops == "custom":
        return {}
    return {torch.ops.involution.involution3d.default: _involution3d_decomposition}


def onnx_translation_table(onnx_ops: str = "standard") -> dict[Callable[..., torch.Tensor], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: the involution op -> ONNX (the 1-D op is
    traced into the 2-D one; the 3-D op is decomposed into it first by :func:`onnx_decompositions`, or with
    ``onnx_ops="custom"`` becomes one ``Involution3d`` node), and ``aten.conv3d`` without onnxscript 0.7's bias bug.

    Args:
        onnx_ops: ``"standard"`` (standard operators, :func:`involution2d_onnx`) or ``"custom"`` (one custom node
            per layer, :func:`involution2d_onnx_custom`, :func:`involution3d_onnx_custom`; run by onnxruntime with
            :mod:`involution.ops.onnxruntime_library`, or OpenVINO with :mod:`involution.ops.openvino_library`).
    """
    check_onnx_ops(onnx_ops)
    if onnx_ops == "standard":
        return {torch.ops.involution.involution2d.default: involution2d_onnx, torch.ops.aten.conv3d.default: conv3d_onnx}
    from . import _library3d  # noqa: F401  (defines torch.ops.involution.involution3d)

    return {torch.ops.involution.involution2d.default: involution2d_onnx_custom,
            torch.ops.aten.conv3d.default: conv3d_onnx,
            torch.ops.involution.involution3d.default: involution3d_onnx_custom}
