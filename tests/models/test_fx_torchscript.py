"""torch.fx and TorchScript: the involution layers and the RedNets trace (``torch.fx.symbolic_trace``, torchvision's
``create_feature_extractor``) and compile (``torch.jit.script``, of the module and of its traced graph), and every
such form computes what the eager module computes, forward and backward, to float32 rounding.

Weights come from tests/model_weights.py, so every involution layer moves the outputs compared (asserted once per
model with :func:`assert_every_involution_matters`): a traced or scripted path that got any of them wrong fails.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.fx
from model_weights import assert_every_involution_matters, weights_matter
from torch import nn

from involution import Involution1d, Involution2d, Involution3d
from involution.models import create_model

# Traced and scripted graphs run the same kernels in the same order as eager mode; the tolerance covers TorchScript
# reordering of elementwise work (measured: equal to the bit here).
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _quiet_jit():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        yield


FORMS = {
    "fx": torch.fx.symbolic_trace,
    "script": torch.jit.script,
    "fx+script": lambda m: torch.jit.script(torch.fx.symbolic_trace(m)),
}


def _forms(model: nn.Module) -> dict[str, nn.Module]:
    """The module as torch.fx traces it, as TorchScript compiles it, and its traced graph compiled (all three
    share ``model``'s parameters)."""
    return {name: make(model) for name, make in FORMS.items()}


def _own_forms(model: nn.Module) -> dict[str, nn.Module]:
    """:func:`_forms`, each of a copy of ``model`` of its own (for training steps)."""
    return {name: make(copy.deepcopy(model)) for name, make in FORMS.items()}


def _assert_same(actual, expected) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


# -- layers ------------------------------------------------------------------------------------------------------
LAYERS = {
    "1d": (Involution1d, (2, 32, 19)),
    "2d": (Involution2d, (2, 32, 11, 13)),
    "3d": (Involution3d, (2, 32, 5, 9, 7)),
}


def _layer(dims: str, stride: int, recompute_kernel: bool, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = LAYERS[dims]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    layer = cls(32, kernel_size=3, stride=stride, recompute_kernel=recompute_kernel, **kwargs)
    return weights_matter(layer, seed=1, run=lambda m: m(x)), x


@pytest.mark.parametrize("recompute_kernel", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dims", sorted(LAYERS))
def test_layer_forms_equal_eager(dims, stride, recompute_kernel):
    layer, x = _layer(dims, stride, recompute_kernel)
    expected = layer(x)
    for name, form in _forms(layer).items():
        _assert_same(form(x), expected)


def test_coordinate_channels_layer_forms_equal_eager():
    layer, x = _layer("2d", 2, True, coord_channels=True)
    expected = layer(x)
    for form in _forms(layer).values():
        _assert_same(form(x), expected)


def test_involution_op_is_one_node_of_the_graph():
    """The op (its checks are Python) and the size-dependent pooling are leaves; the generator's convs are not, so
    feature extraction can pick them."""
    graph = torch.fx.symbolic_trace(Involution2d(32, stride=2)).graph
    targets = [getattr(n.target, "__name__", n.target) for n in graph.nodes]
    assert targets.count("involution_nd") == 1
    assert "ceil_avg_pool" in targets
    assert "conv1.conv" in targets and "conv2.conv" in targets


@pytest.mark.parametrize("dims", sorted(LAYERS))
def test_layer_train_step_equals_eager(dims):
    """Train mode (batch statistics, running statistics updated), gradients of input and weights: the recomputing
    eager layer and its graph forms, which store the kernels instead, agree."""
    layer, x = _layer(dims, 2, True)
    layer.train()
    grad = torch.randn_like(layer(x))

    def step(module: nn.Module) -> dict[str, torch.Tensor]:
        inp = x.clone().requires_grad_()
        module(inp).backward(grad)
        return {"input": inp.grad, **_grads_and_buffers(module)}

    expected = step(copy.deepcopy(layer))
    for form in _own_forms(layer).values():
        _assert_same(step(form), expected)


def _grads_and_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """By name: a traced graph holds its parameters in the order the graph first uses them."""
    return {**{f"grad:{n}": p.grad for n, p in module.named_parameters()}, **dict(module.named_buffers())}


# -- models ------------------------------------------------------------------------------------------------------
def _model(name: str, size: int, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = create_model(name, width=0.25, num_classes=10, **kwargs)
    return weights_matter(model, seed=2, run=lambda m: m(x)), x


MODELS = {"rednet26_small": 17, "rednet26": 64}  # odd sizes: ceil-mode pooling's clipped windows are in the graph


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rednet_forms_equal_eager(name):
    model, x = _model(name, MODELS[name])
    expected = model(x)
    for form in _forms(model).values():
        _assert_same(form(x), expected)
    # every involution layer moves the logits by far more than the tolerance: no layer can be wrong unseen
    assert_every_involution_matters(model, lambda m: m(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["rednet38", "rednet50", "rednet101", "rednet152", "resnet26_small"])
def test_every_model_scripts_and_traces(name):
    """The other registered depths and the ResNet baseline, narrow (their blocks are rednet26's)."""
    model = create_model(name, width=0.125, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    for form in _forms(model).values():
        _assert_same(form(x), expected)


def test_features_only_forms_equal_eager():
    model, x = _model("rednet26_small", 17, features_only=True, out_indices=(1, 2))
    expected = model(x)
    for form in _forms(model).values():
        actual = form(x)
        assert len(actual) == len(expected) == 2
        for a, e in zip(actual, expected, strict=True):
            _assert_same(a, e)


def test_create_feature_extractor_stage_maps_equal_eager():
    from torchvision.models.feature_extraction import create_feature_extractor

    model, x = _model("rednet26_small", 17)
    nodes = {f"layer{i}": f"stage{i}" for i in range(1, 5)}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    _, expected = model.forward_intermediates(x)
    actual = extractor(x)
    assert list(actual) == list(nodes.values())
    for a, e in zip(actual.values(), expected, strict=True):
        _assert_same(a, e)
    assert_every_involution_matters(
        model, lambda m: torch.cat([t.flatten() for t in m.forward_intermediates(x)[1]]), atol=ATOL, rtol=RTOL,
        every=3,
    )


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_rednet_train_step_equals_eager(grad_checkpointing):
    """Train mode, one backward: the eager model recomputes (stem, kernels, and blocks when grad_checkpointing);
    the traced and scripted ones do not; logits, every gradient and the BatchNorm statistics agree."""
    model, x = _model("rednet26_small", 17, grad_checkpointing=grad_checkpointing)
    model.train()
    target = torch.tensor([1, 7])

    def step(module: nn.Module) -> dict[str, torch.Tensor]:
        logits = module(x)
        nn.functional.cross_entropy(logits, target).backward()
        return {"logits": logits, **_grads_and_buffers(module)}

    expected = step(copy.deepcopy(model))
    for form in _own_forms(model).values():
        _assert_same(step(form), expected)
