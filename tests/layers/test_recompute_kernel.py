"""Involution2d(recompute_kernel=True) regenerates the kernels in backward instead of storing them."""

import copy

import torch

from involution import Involution2d


def _saved_bytes(layer, x):
    """Bytes of tensors autograd saves for the backward of ``layer(x)`` (a tensor saved twice counts twice)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, total


def _grads(layer, x):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(torch.ones_like(out))
    return x.grad, {n: p.grad for n, p in layer.named_parameters()}


def test_same_gradients_with_and_without_recomputation():
    torch.manual_seed(0)
    stored = Involution2d(32, kernel_size=7, stride=2, recompute_kernel=False)
    recomputed = copy.deepcopy(stored)
    recomputed.recompute_kernel = True
    x = torch.randn(2, 32, 15, 15)
    gx_a, gp_a = _grads(stored, x)
    gx_b, gp_b = _grads(recomputed, x)
    torch.testing.assert_close(gx_a, gx_b)
    for name in gp_a:
        torch.testing.assert_close(gp_a[name], gp_b[name], msg=name)


def test_kernels_are_not_kept_for_backward():
    torch.manual_seed(0)
    layer = Involution2d(64, kernel_size=7)
    x = torch.randn(2, 64, 12, 12, requires_grad=True)
    kernel_bytes = layer.generate_kernel(x).numel() * 4  # (N, G, 7, 7, H, W) float32
    layer.recompute_kernel = False
    _, stored = _saved_bytes(layer, x)
    layer.recompute_kernel = True
    _, recomputed = _saved_bytes(layer, x)
    assert stored - recomputed >= kernel_bytes


def test_no_recomputation_without_grad():
    layer = Involution2d(16, kernel_size=3).eval()
    with torch.no_grad():
        _, saved = _saved_bytes(layer, torch.randn(1, 16, 8, 8))
    assert saved == 0
