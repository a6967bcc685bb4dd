"""FLOP formulas of the involution ops, registered with :class:`torch.utils.flop_counter.FlopCounterMode`.

Each of the three ops does one multiply-add per (output element, tap) pair, 2 FLOPs as torch counts a
convolution's, taps in the zero padding included::

    aggregation MACs = N * C * Ho * Wo * Kh * Kw          (3-D: N * C * Do * Ho * Wo * Kd * Kh * Kw)

Importing this module (``involution.ops`` does) registers the formulas in torch's global registry, so a plain
``FlopCounterMode()`` counts the involution ops; :data:`FLOP_FORMULAS` is the same mapping for ``custom_mapping``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from ._library import involution2d_op  # noqa: F401  (defines torch.ops.involution.involution2d*)
from ._library3d import involution3d_op  # noqa: F401  (defines torch.ops.involution.involution3d*)

__all__ = ["FLOP_FORMULAS", "aggregation_macs", "register_flop_formulas"]


def aggregation_macs(features_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """``N * C * Ho * Wo * Kh * Kw`` from features ``(N, C, ...)`` and a weight ``(N, G, Kh, Kw, Ho, Wo)`` (or
    ``(N, G, Kd, Kh, Kw, Do, Ho, Wo)``: every kernel and output size multiplies in)."""
    n, c = int(features_shape[0]), int(features_shape[1])
    return n * c * math.prod(int(s) for s in weight_shape[2:])


def _involution_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``involution2d(input (N, C, H, W), weight (N, G, Kh, Kw, Ho, Wo))`` or ``involution3d``: 2 FLOPs per
    multiply-add."""
    return 2 * aggregation_macs(input_shape, weight_shape)


def _backward_input_flop(grad_output_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``grad_input``: every (output pixel, tap) pair adds one product into the input gradient."""
    return 2 * aggregation_macs(grad_output_shape, weight_shape)


def _backward_weight_flop(grad_output_shape, input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``grad_weight (N, G, Kh, Kw, Ho, Wo)``: each entry sums C/G products, again N*C*Kh*Kw*Ho*Wo in all (3-D
    alike)."""
    return 2 * aggregation_macs(grad_output_shape, weight_shape)


#: The formulas, as ``FlopCounterMode(custom_mapping=FLOP_FORMULAS)`` takes them (shape-based).
FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.involution.involution2d: _involution_flop,
    torch.ops.involution.involution2d_backward_input: _backward_input_flop,
    torch.ops.involution.involution2d_backward_weight: _backward_weight_flop,
    torch.ops.involution.involution3d: _involution_flop,
    torch.ops.involution.involution3d_backward_input: _backward_input_flop,
    torch.ops.involution.involution3d_backward_weight: _backward_weight_flop,
}


def register_flop_formulas() -> None:
    """Register :data:`FLOP_FORMULAS` in torch's global registry (done on import; idempotent)."""
    for op, formula in FLOP_FORMULAS.items():
        if op not in flop_registry:  # called again (public, idempotent): torch refuses a second registration
            register_flop_formula(op)(formula)


register_flop_formulas()
