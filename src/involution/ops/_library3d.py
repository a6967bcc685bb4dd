"""The 3-D involution as its own ``torch.library`` custom op: schema, fake impls, autograd and autocast rules.

Three ops, the 2-D ones' counterparts (:mod:`._library`), with (d, h, w) triples:

* ``involution::involution3d(input, weight, stride, padding, dilation) -> out``
* ``involution::involution3d_backward_input(grad_output, weight, input_size, stride, padding, dilation)``
* ``involution::involution3d_backward_weight(grad_output, input, weight, stride, padding, dilation)``

So ``opcheck``, ``torch.compile`` and ``torch.export`` see one op per pass, whatever runs it: a backend's own 3-D
kernels where it has them (``native_3d``: the ``"cpu"`` and ``"triton"`` backends), else the sums of 2-D taps of
:mod:`._depth_taps`. Features keep their layout (NDHWC stays NDHWC, anything else NCDHW; a grad_input takes
grad_output's), a weight gradient the weight's strides when they are dense; the kernels write them in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _depth_taps
from ._library import _NAMESPACE, register_adjoint_autograd, register_autocast
from ._shapes import empty_volumes, empty_weight_grad
from .backends import select_backend


def _triples(*seqs: Sequence[int]) -> list[tuple[int, int, int]]:
    return [(int(s[0]), int(s[1]), int(s[2])) for s in seqs]


# --------------------------------------------------------------------------------------------------- forward
@torch.library.custom_op(f"{_NAMESPACE}::involution3d", mutates_args=())
def involution3d_op(
    input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Tensor:
    out = _forward_fake(input, weight, stride, padding, dilation)
    backend = select_backend(input, weight)
    if backend.native_3d:
        backend.forward3d(input, weight, out, *_triples(stride, padding, dilation))
    else:
        _depth_taps.forward(input, weight, list(stride), list(padding), list(dilation), out)
    return out


@involution3d_op.register_fake
def _forward_fake(input: Tensor, weight: Tensor, *conv: Sequence[int]) -> Tensor:
    """The output, uninitialised: (N, C, Do, Ho, Wo) laid out like ``input``. ``conv``: stride, padding, dilation."""
    n, c = input.shape[:2]
    return empty_volumes(input, (n, c, *weight.shape[-3:]))


# ------------------------------------------------------------------------------------------- backward: input
@torch.library.custom_op(f"{_NAMESPACE}::involution3d_backward_input", mutates_args=())
def involution3d_backward_input_op(
    grad_output: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    grad_input = _backward_input_fake(grad_output, weight, input_size, stride, padding, dilation)
    backend = select_backend(grad_output, weight)
    if backend.native_3d:
        backend.backward_input3d(grad_output, weight, grad_input, *_triples(stride, padding, dilation))
    else:
        _depth_taps.backward_input(grad_output, weight, list(stride), list(padding), list(dilation), grad_input)
    return grad_input


@involution3d_backward_input_op.register_fake
def _backward_input_fake(
    grad_output: Tensor, weight: Tensor, input_size: Sequence[int], *conv: Sequence[int]
) -> Tensor:
    return empty_volumes(grad_output, input_size)


# ------------------------------------------------------------------------------------------ backward: weight
@torch.library.custom_op(f"{_NAMESPACE}::involution3d_backward_weight", mutates_args=())
def involution3d_backward_weight_op(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    """``weight`` only gives the gradient's shape and strides; its values are not read."""
    grad_weight = _backward_weight_fake(grad_output, input, weight, stride, padding, dilation)
    backend = select_backend(input, grad_output)
    if backend.native_3d:
        backend.backward_weight3d(grad_output, input, grad_weight, *_triples(stride, padding, dilation))
    else:
        _depth_taps.backward_weight(grad_output, input, list(stride), list(padding), list(dilation), grad_weight)
    return grad_weight


@involution3d_backward_weight_op.register_fake
def _backward_weight_fake(grad_output: Tensor, input: Tensor, weight: Tensor, *conv: Sequence[int]) -> Tensor:
    return empty_weight_grad(weight)


# ---------------------------------------------------------------------------------------- autograd, autocast
register_adjoint_autograd(involution3d_op, involution3d_backward_input_op, involution3d_backward_weight_op)
for _device_type in ("cpu", "cuda"):
    register_autocast("involution3d", _device_type)
