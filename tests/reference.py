"""The correctness oracle for the involution op: a plain float64 ``F.unfold`` formulation.

Every backend's tests compare against this one function. It is deliberately simple (it materialises the
Kh*Kw-times unfolded input) and always computes in float64. It lives in ``tests/`` only and must never be imported
by ``src/``.

    out[n, c, i, j] = sum_{u, v} weight[n, c // (C/G), u, v, i, j] * input[n, c, i*s - p + u*d, j*s - p + v*d]

with zeros outside the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


def involution2d_reference(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """The involution of ``input`` (N, C, H, W) with ``weight`` (N, G, Kh, Kw, Ho, Wo), in float64.

    Differentiable (autograd goes through ``F.unfold``), so reference gradients come from autograd through it.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    x = input.to(torch.float64)
    w = weight.to(torch.float64)
    n, c, h, wd = x.shape
    wn, g, kh, kw, ho, wo = w.shape
    assert wn == n, (wn, n)
    assert c % g == 0, (c, g)
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, C*Kh*Kw, L), C-major
    assert cols.shape[-1] == ho * wo, (cols.shape, ho, wo)
    cols = cols.reshape(n, g, c // g, kh * kw, ho * wo)
    out = (cols * w.reshape(n, g, 1, kh * kw, ho * wo)).sum(dim=3)
    return out.reshape(n, c, ho, wo)


def reference_grads(
    input: Tensor,
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> tuple[Tensor, Tensor]:
    """(grad_input, grad_weight) in float64, by autograd through :func:`involution2d_reference`."""
    x = input.detach().to(torch.float64).requires_grad_()
    w = weight.detach().to(torch.float64).requires_grad_()
    out = involution2d_reference(x, w, stride, padding, dilation)
    gx, gw = torch.autograd.grad(out, (x, w), grad_output.detach().to(torch.float64))
    return gx, gw


def involution2d_naive(
    input: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """The defining formula, one output element at a time (tiny shapes only): used to check the oracle itself."""
    return involution_nd_naive(input, weight, _pair(stride), _pair(padding), _pair(dilation))


def involution_nd_naive(
    input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> Tensor:
    """The defining formula in any number of spatial dimensions, one output element and one tap at a time, in
    Python floats (tiny shapes only): the check of :func:`involution_nd_reference` and the 2-D oracle."""
    import itertools

    dims = input.dim() - 2
    n_, c_, *size = input.shape
    g_ = weight.shape[1]
    kernel, out_size = weight.shape[2 : 2 + dims], weight.shape[2 + dims :]
    x, w = input.detach().to(torch.float64), weight.detach().to(torch.float64)
    out = torch.zeros(n_, c_, *out_size, dtype=torch.float64)
    for n, c in itertools.product(range(n_), range(c_)):
        for o in itertools.product(*(range(k) for k in out_size)):
            acc = 0.0
            for t in itertools.product(*(range(k) for k in kernel)):
                at = tuple(oi * s - p + ti * d for oi, ti, s, p, d in zip(o, t, stride, padding, dilation))
                if all(0 <= a < sz for a, sz in zip(at, size)):
                    acc += float(w[(n, c // (c_ // g_), *t, *o)]) * float(x[(n, c, *at)])
            out[(n, c, *o)] = acc
    return out


def involution_nd_reference(
    input: Tensor,
    weight: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Tensor:
    """The involution in any number of spatial dimensions, in float64, without unfold: one explicit term per tap.

    ``input`` (N, C, *size), ``weight`` (N, G, *kernel, *out_size); ``stride``/``padding``/``dilation`` one int per
    dimension. Differentiable, so reference gradients come from autograd through it.
    """
    import itertools

    dims = input.dim() - 2
    x, w = input.to(torch.float64), weight.to(torch.float64)
    n, c = x.shape[:2]
    g = w.shape[1]
    kernel, out_size = tuple(w.shape[2 : 2 + dims]), tuple(w.shape[2 + dims :])
    xp = F.pad(x, [v for p in reversed(padding) for v in (p, p)])
    out = x.new_zeros((n, c, *out_size))
    for taps in itertools.product(*(range(k) for k in kernel)):
        # the input element tap `taps` reads for every output position: index o * s + t * d of the padded input
        window = tuple(slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, s, o in zip(taps, dilation, stride, out_size))
        xs = xp[(slice(None), slice(None), *window)].reshape(n, g, c // g, *out_size)
        out = out + (xs * w[(slice(None), slice(None), *taps)].unsqueeze(2)).reshape(n, c, *out_size)
    return out


def involution_nd_reference_and_grads(
    input: Tensor,
    weight: Tensor,
    grad_output: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(output, grad_input, grad_weight) in float64 for any number of spatial dimensions, by autograd through
    :func:`involution_nd_reference`."""
    x = input.detach().to(torch.float64).requires_grad_()
    w = weight.detach().to(torch.float64).requires_grad_()
    out = involution_nd_reference(x, w, stride, padding, dilation)
    gx, gw = torch.autograd.grad(out, (x, w), grad_output.detach().to(torch.float64))
    return out.detach(), gx, gw
