"""The involution operator as a ``torch.library`` custom op: schema, fake impls, autograd and autocast rules.

Three ops live in the ``involution`` namespace:

* ``involution::involution2d(input, weight, stride, padding, dilation) -> out``
* ``involution::involution2d_backward_input(grad_output, weight, input_size, stride, padding, dilation) -> grad_input``
* ``involution::involution2d_backward_weight(grad_output, input, weight, stride, padding, dilation) -> grad_weight``

Each gradient has its own kernel, so nothing is unfolded in backward either. The three ops are adjoint to one
another (every one is bilinear), so each one's autograd formula is written with the other two, which also gives
double backward for free. The schemas are defined here in Python, so the op exists even where no compiler is
available; the kernels behind them are chosen at run time by :mod:`involution.ops.backends`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._shapes import autocast_dtype_of, empty_features, empty_weight_grad
from .backends import select_backend

_NAMESPACE = "involution"


def _pairs(*seqs: Sequence[int]) -> list[tuple[int, int]]:
    return [(int(s[0]), int(s[1])) for s in seqs]


# --------------------------------------------------------------------------------------------------- forward
@torch.library.custom_op(f"{_NAMESPACE}::involution2d", mutates_args=())
def involution2d_op(
    input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Tensor:
    out = _forward_fake(input, weight, stride, padding, dilation)
    select_backend(input, weight).forward(input, weight, out, *_pairs(stride, padding, dilation))
    return out


@involution2d_op.register_fake
def _forward_fake(input: Tensor, weight: Tensor, *conv: Sequence[int]) -> Tensor:
    """The output, uninitialised: (N, C, Ho, Wo) laid out like ``input``. ``conv``: stride, padding, dilation."""
    n, c = input.shape[:2]
    ho, wo = weight.shape[-2:]
    return empty_features(input, (n, c, ho, wo))


# ------------------------------------------------------------------------------------------- backward: input
@torch.library.custom_op(f"{_NAMESPACE}::involution2d_backward_input", mutates_args=())
def involution2d_backward_input_op(
    grad_output: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    grad_input = _backward_input_fake(grad_output, weight, input_size, stride, padding, dilation)
    select_backend(grad_output, weight).backward_input(
        grad_output, weight, grad_input, *_pairs(stride, padding, dilation)
    )
    return grad_input


@involution2d_backward_input_op.register_fake
def _backward_input_fake(
    grad_output: Tensor, weight: Tensor, input_size: Sequence[int], *conv: Sequence[int]
) -> Tensor:
    return empty_features(grad_output, input_size)


# ------------------------------------------------------------------------------------------ backward: weight
@torch.library.custom_op(f"{_NAMESPACE}::involution2d_backward_weight", mutates_args=())
def involution2d_backward_weight_op(
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
    backend.backward_weight(grad_output, input, grad_weight, *_pairs(stride, padding, dilation))
    return grad_weight


@involution2d_backward_weight_op.register_fake
def _backward_weight_fake(grad_output: Tensor, input: Tensor, weight: Tensor, *conv: Sequence[int]) -> Tensor:
    return empty_weight_grad(weight)


# ----------------------------------------------------------------------------------------------- autograd
def register_adjoint_autograd(forward, backward_input, backward_weight) -> None:
    """The autograd formulas of a (forward, backward_input, backward_weight) triple of custom ops, each bilinear and
    adjoint to the other two, written with the other two (double backward included). Shared by the 2-D and 3-D ops,
    whose signatures are the same: two tensors first (the ones their gradients read), then (an input size for
    backward_input,) stride, padding, dilation."""
    fwd, bwd_in, bwd_w = (getattr(torch.ops.involution, op._name) for op in (forward, backward_input, backward_weight))

    def setup(ctx, inputs, output) -> None:
        """All three ops: save the two tensors their gradients read (the first two inputs) and the conv arguments."""
        ctx.save_for_backward(*inputs[:2])
        ctx.conv_args = tuple(inputs[-3:])  # (stride, padding, dilation)

    def grad_forward(ctx, grad_out: Tensor):
        input, weight = ctx.saved_tensors
        args = ctx.conv_args
        grad_input = bwd_in(grad_out, weight, input.shape, *args) if ctx.needs_input_grad[0] else None
        grad_weight = bwd_w(grad_out, input, weight, *args) if ctx.needs_input_grad[1] else None
        return grad_input, grad_weight, None, None, None

    def grad_backward_input(ctx, ggx: Tensor):
        # grad_input = A(weight)^T grad_output, bilinear in (grad_output, weight).
        grad_output, weight = ctx.saved_tensors
        args = ctx.conv_args
        g_gy = fwd(ggx, weight, *args) if ctx.needs_input_grad[0] else None
        g_w = bwd_w(grad_output, ggx, weight, *args) if ctx.needs_input_grad[1] else None
        return g_gy, g_w, None, None, None, None

    def grad_backward_weight(ctx, ggw: Tensor):
        # grad_weight is bilinear in (grad_output, input); `weight` only fixes the layout.
        grad_output, input = ctx.saved_tensors
        args = ctx.conv_args
        g_gy = fwd(input, ggw, *args) if ctx.needs_input_grad[0] else None
        g_x = bwd_in(grad_output, ggw, input.shape, *args) if ctx.needs_input_grad[1] else None
        return g_gy, g_x, None, None, None, None

    forward.register_autograd(grad_forward, setup_context=setup)
    backward_input.register_autograd(grad_backward_input, setup_context=setup)
    backward_weight.register_autograd(grad_backward_weight, setup_context=setup)


register_adjoint_autograd(involution2d_op, involution2d_backward_input_op, involution2d_backward_weight_op)


# ----------------------------------------------------------------------------------------------- autocast
def register_autocast(op_name: str, device_type: str) -> None:
    """Under autocast, cast input and weight of ``involution::<op_name>`` to the autocast dtype in effect, then run
    the op with autocast off.

    ``torch.library.register_autocast`` fixes one cast dtype per device at registration (so in every torch this
    package supports, 2.11 to 2.14); AMP users pick float16 or bfloat16 at run time, so this rule reads
    ``torch.get_autocast_dtype`` instead and otherwise does the same, through the dispatcher internals the public
    function uses (``test_autocast_mixed_dtypes`` holds the run-time choice).
    """
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)
    excluded = torch._C.DispatchKeySet(key)
    op = getattr(torch.ops.involution, op_name).default

    def cast_and_call(input, weight, stride, padding, dilation):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t: Tensor) -> Tensor:
            wanted = autocast_dtype_of(t.dtype, dtype)
            return t if t.dtype == wanted else t.to(wanted)  # (a `to` that changes nothing still costs a dispatch)

        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op(cast(input), cast(weight), stride, padding, dilation)

    op.py_impl(key)(cast_and_call)  # used while tracing (torch.compile / torch.export)
    _AUTOCAST_LIB.impl(op_name, lambda _keyset, *args: cast_and_call(*args), key_name, with_keyset=True)


_AUTOCAST_LIB = torch.library.Library(_NAMESPACE, "FRAGMENT")
for _device_type in ("cpu", "cuda"):
    register_autocast("involution2d", _device_type)
