"""The weights every model-path comparison test uses (tests/model_weights.py) make each involution layer matter.

If this fails, the path-comparison tests (export, compile, checkpoints, features, grad checkpointing,
involutionize) have silently become unable to see a wrong involution path.
"""

from __future__ import annotations

import pytest
import torch

from involution import create_model
from model_weights import involution_sensitivity, randomise_weights, weights_matter

# Every comparison of two model paths in the tests accepts at most this relative error (1e-4); a broken involution
# layer must change the output by at least ten times that.
LOOSEST_TOLERANCE = 1e-4


@pytest.mark.parametrize("name, kwargs, size", [
    ("rednet26", {}, 64),
    ("rednet26_small", {"num_classes": 10, "width": 0.25}, 16),
    ("rednet50", {"features_only": True, "width": 0.25}, 64),
])
def test_every_involution_layer_matters(name, kwargs, size) -> None:
    model = weights_matter(create_model(name, **kwargs))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    sensitivity = involution_sensitivity(model, lambda m: m(x))
    assert len(sensitivity) >= 9
    weakest = min(sensitivity, key=sensitivity.get)
    assert sensitivity[weakest] > 10 * LOOSEST_TOLERANCE, (weakest, sensitivity[weakest])


def test_a_fresh_rednet_hides_its_residual_involutions() -> None:
    """Why the helper exists: as built, only the stem's involution reaches the output."""
    torch.manual_seed(0)
    model = create_model("rednet26_small", num_classes=10, width=0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    sensitivity = involution_sensitivity(model, lambda m: m(x))
    blind = [name for name, s in sensitivity.items() if s == 0.0]
    assert len(blind) == len(sensitivity) - 1 and all(name.startswith("layer") for name in blind)


def test_randomise_weights_touches_every_float_tensor_and_is_seeded() -> None:
    a = randomise_weights(create_model("rednet26_small", width=0.25), seed=3)
    b = randomise_weights(create_model("rednet26_small", width=0.25), seed=3)
    fresh = create_model("rednet26_small", width=0.25)
    for (name, t), u, f in zip(a.state_dict().items(), b.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(t, u, rtol=0, atol=0, msg=name)
        if t.is_floating_point():
            assert not torch.equal(t, f), name
            if name.endswith(("weight", "running_var")):
                assert (t != 0).all(), name
