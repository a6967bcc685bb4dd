import pytest
import torch

from involution.layers.pool import CeilAvgPool, CeilAvgPool2d


@pytest.mark.parametrize("stride", [(2, 2), (3, 2), (1, 3)])
@pytest.mark.parametrize("size", [(17, 17), (18, 16), (7, 9), (1, 1), (2, 5)])
def test_equals_ceil_mode_avg_pool(stride, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    ours = CeilAvgPool2d(stride)(x)
    theirs = torch.nn.AvgPool2d(stride, stride, ceil_mode=True)(x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    (ga,) = torch.autograd.grad(ours, x, g)
    (gb,) = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(ga, gb)


def test_gradient_under_inductor_on_odd_sizes():
    """torch 2.14's Inductor gets AvgPool2d(ceil_mode=True)'s input gradient wrong on odd sizes; ours stays right."""
    torch._dynamo.reset()
    pool = CeilAvgPool2d((2, 2))
    x = torch.randn(2, 3, 17, 15, requires_grad=True)
    compiled = torch.compile(pool, fullgraph=True)
    (g_c,) = torch.autograd.grad(compiled(x).square().sum(), x)
    (g_e,) = torch.autograd.grad(pool(x).square().sum(), x)
    torch.testing.assert_close(g_c, g_e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "stride, size",
    [((2,), (7,)), ((3,), (10,)), ((2,), (1,)), ((2, 2, 2), (5, 4, 7)), ((1, 2, 3), (3, 9, 8)), ((2, 1, 2), (3, 1, 5))],
)
def test_sequences_and_volumes_equal_ceil_mode_avg_pool(stride, size):
    """The 1-D pooling runs as a height-1 image and the 3-D one as a volume: both equal nn.AvgPool1d/3d(ceil_mode)."""
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    ours = CeilAvgPool(stride)(x)
    theirs = {1: torch.nn.AvgPool1d, 3: torch.nn.AvgPool3d}[len(stride)](stride, stride, ceil_mode=True)(x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0])
