"""Bad arguments raise TypeError/ValueError naming the problem, before any backend runs."""

from __future__ import annotations

import pytest
import torch

import involution
from involution.ops import use_backend
from op_helpers import CPU_BACKENDS


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


# input (2, 4, 8, 8) with a 3x3 kernel, padding 1 -> output 8x8; weight (2, 2, 3, 3, 8, 8)
X = _x(2, 4, 8, 8)
W = _x(2, 2, 3, 3, 8, 8)

CASES = [
    # (id, input, weight, kwargs, exception, message pattern)
    ("input-3d", _x(4, 8, 8), W, dict(padding=1), ValueError, r"input must be 4-D \(N, C, H, W\), got 3-D"),
    ("input-5d", _x(2, 4, 8, 8, 1), W, dict(padding=1), ValueError, r"input must be 4-D"),
    ("weight-5d", X, _x(2, 2, 3, 3, 8), dict(padding=1), ValueError, r"weight must be 6-D \(N, G, Kh, Kw, Ho, Wo\), got 5-D"),
    ("weight-4d", X, _x(2, 18, 8, 8), dict(padding=1), ValueError, r"weight must be 6-D"),
    ("batch-mismatch", X, _x(3, 2, 3, 3, 8, 8), dict(padding=1), ValueError, r"batch size 3 does not match input's 2"),
    ("channels-not-divisible", X, _x(2, 3, 3, 3, 8, 8), dict(padding=1), ValueError, r"C=4 must be divisible by .* G=3"),
    ("zero-groups", X, _x(2, 0, 3, 3, 8, 8), dict(padding=1), ValueError, r"divisible by .* G=0"),
    ("zero-kernel", X, _x(2, 2, 0, 3, 8, 8), dict(padding=1), ValueError, r"kernel size must be >= 1"),
    ("weight-spatial-too-big", X, _x(2, 2, 3, 3, 9, 8), dict(padding=1), ValueError, r"weight's spatial size \(9, 8\) must equal the output size \(8, 8\)"),
    ("weight-spatial-ignores-stride", X, W, dict(padding=1, stride=2), ValueError, r"must equal the output size \(4, 4\)"),
    ("weight-spatial-no-padding", X, W, dict(), ValueError, r"must equal the output size \(6, 6\)"),
    ("dtype-mismatch", X, W.double(), dict(padding=1), TypeError, r"same dtype.*float32.*float64"),
    ("dtype-mismatch-bf16", X, W.bfloat16(), dict(padding=1), TypeError, r"same dtype"),
    ("integer-input", X.long(), W, dict(padding=1), TypeError, r"input must be a floating-point tensor.*int64"),
    ("integer-weight", X, W.int(), dict(padding=1), TypeError, r"weight must be a floating-point tensor.*int32"),
    ("bool-input", X.bool(), W, dict(padding=1), TypeError, r"input must be a floating-point"),
    ("complex-input", X.to(torch.complex64), W, dict(padding=1), TypeError, r"input must be a floating-point"),
    ("negative-padding", X, W, dict(padding=-1), ValueError, r"padding must be >= 0, got \(-1, -1\)"),
    ("negative-padding-pair", X, W, dict(padding=(1, -2)), ValueError, r"padding must be >= 0"),
    ("stride-0", X, W, dict(padding=1, stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    ("stride-negative", X, W, dict(padding=1, stride=(1, -1)), ValueError, r"stride must be >= 1"),
    ("dilation-0", X, W, dict(padding=1, dilation=0), ValueError, r"dilation must be >= 1, got \(0, 0\)"),
    ("stride-float", X, W, dict(padding=1, stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    ("stride-bool", X, W, dict(padding=1, stride=True), TypeError, r"stride must be an int or a pair of ints, got a bool"),
    ("stride-triple", X, W, dict(padding=1, stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair"),
    ("padding-float-pair", X, W, dict(padding=(1.0, 1)), TypeError, r"padding must be an int or a pair"),
    ("dilation-str", X, W, dict(padding=1, dilation="2"), TypeError, r"dilation must be an int or a pair"),
    ("input-too-small", _x(2, 4, 2, 2), _x(2, 2, 3, 3, 1, 1), dict(), ValueError, r"input of spatial size \(2, 2\) is too small for kernel \(3, 3\)"),
    ("input-too-small-dilated", _x(2, 4, 5, 5), _x(2, 2, 3, 3, 1, 1), dict(dilation=3), ValueError, r"too small"),
    ("input-not-a-tensor", X.numpy(), W, dict(padding=1), TypeError, r"input must be a torch.Tensor, got ndarray"),
    ("weight-not-a-tensor", X, [1.0], dict(padding=1), TypeError, r"weight must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize(
    "input, weight, kwargs, exc, match", [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_bad_arguments_raise(backend: str, input, weight, kwargs, exc, match) -> None:
    with use_backend(backend):
        with pytest.raises(exc, match=match):
            involution.involution2d(input, weight, **kwargs)


def test_the_valid_call_used_above_works() -> None:
    """The error cases are single changes away from this valid call."""
    assert involution.involution2d(X, W, padding=1).shape == (2, 4, 8, 8)
    assert involution.involution2d(X, _x(2, 2, 3, 3, 4, 4), stride=2, padding=1).shape == (2, 4, 4, 4)


def test_device_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same device, got cpu and meta"):
        involution.involution2d(X, W.to("meta"), padding=1)
    with pytest.raises(ValueError, match=r"same device, got meta and cpu"):
        involution.involution2d(X.to("meta"), W, padding=1)


def test_meta_tensors_give_shapes_without_running_a_backend() -> None:
    out = involution.involution2d(X.to("meta"), _x(2, 2, 3, 5, 4, 8).to("meta"), stride=(2, 1), padding=(1, 2))
    assert out.device.type == "meta" and out.shape == (2, 4, 4, 8)


def test_errors_are_raised_before_any_backend_runs(monkeypatch) -> None:
    from involution.ops.backends import get_backend

    def boom(*args, **kwargs):
        raise AssertionError("a backend ran on invalid arguments")

    for name in CPU_BACKENDS:
        monkeypatch.setattr(get_backend(name), "forward", boom)
    with pytest.raises(ValueError, match="must equal the output size"):
        involution.involution2d(X, W)


def test_layer_rejects_wrong_input() -> None:
    layer = involution.Involution2d(8, kernel_size=3)
    with pytest.raises(ValueError, match=r"expects input \(N, 8, H, W\), got \(2, 4, 5, 5\)"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"expects input \(N, 8, H, W\), got \(8, 5, 5\)"):
        layer(torch.randn(8, 5, 5))
