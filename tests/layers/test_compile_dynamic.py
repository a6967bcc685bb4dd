"""Stride-2 involution layers under ``torch.compile(dynamic=True)``, forward and backward (issue 26, defect 5).

The ceil-mode pooling of a strided layer's kernel generator once computed its padding with a Python modulo of the
symbolic size; that expression reached BatchNorm's element count in the backward graph, where Inductor failed with
"'TensorReferenceAnalysis' has no attribute 'python_mod'". Each test compiles a fresh layer with Inductor (the
default backend, the one that failed) and compares output and gradients with the same layer run eagerly.
"""

from __future__ import annotations

import copy

import pytest
import torch

from involution import Involution1d, Involution2d, Involution3d

# (layer class, two input sizes): one even and one odd per axis, small so that Inductor compiles quickly.
CASES = {
    1: (Involution1d, (10,), (7,)),
    2: (Involution2d, (8, 8), (9, 7)),
    3: (Involution3d, (4, 6, 6), (5, 5, 7)),
}
CHANNELS = 8


def _layer(dims: int) -> torch.nn.Module:
    """A stride-2 layer of ``dims`` spatial dimensions in float64 (so eager and compiled agree to float64 noise)."""
    torch.manual_seed(dims)
    layer = CASES[dims][0](CHANNELS, 3, stride=2, group_channels=4, reduction_ratio=2)
    return layer.double()


def _forward_backward(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``layer(x)``, the input's gradient and every parameter's gradient of a loss on it (grads reset first)."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = layer(x)
    out.square().mean().backward()
    return out.detach(), x.grad, [p.grad for p in layer.parameters()]


def _assert_same(compiled: tuple, eager: tuple) -> None:
    out_c, gx_c, gp_c = compiled
    out_e, gx_e, gp_e = eager
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(gx_c, gx_e)
    assert len(gp_c) == len(gp_e) and all(g is not None for g in gp_c)
    for g_c, g_e in zip(gp_c, gp_e):
        torch.testing.assert_close(g_c, g_e)


@pytest.mark.parametrize("dims", sorted(CASES))
def test_stride_2_layer_compiles_with_dynamic_shapes_forward_and_backward(dims):
    torch._dynamo.reset()
    eager = _layer(dims)
    compiled = torch.compile(copy.deepcopy(eager), dynamic=True)
    for size in CASES[dims][1:]:
        x = torch.randn(2, CHANNELS, *size, dtype=torch.float64)
        result = _forward_backward(compiled, x)
        assert result[0].shape[2:] == tuple((n + 1) // 2 for n in size)
        _assert_same(result, _forward_backward(eager, x))


def test_training_compile_after_an_eval_compile_at_another_size():
    """An eval-mode (no-grad) compile at one size, then a training compile with autograd at another."""
    torch._dynamo.reset()
    eager = _layer(2)
    compiled = torch.compile(copy.deepcopy(eager), dynamic=True)
    first, second = CASES[2][1:]
    x = torch.randn(3, CHANNELS, *first, dtype=torch.float64)
    compiled.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
    compiled.train(), eager.train()
    x = torch.randn(2, CHANNELS, *second, dtype=torch.float64)
    _assert_same(_forward_backward(compiled, x), _forward_backward(eager, x))
