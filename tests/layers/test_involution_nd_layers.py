"""Involution1d / Involution3d: shapes, options, the kernels they generate, translation equivariance, and exports
(torch.export, ONNX with standard operators run by onnxruntime) checked against eager at other sizes, with every
weight random (a freshly built layer's would hide a wrong path as well as a right one)."""

from __future__ import annotations

import pytest
import torch
from backend_requirements import require_or_skip
from torch import nn

from involution import Involution1d, Involution3d
from involution.ops import involution1d, involution3d
from model_weights import assert_every_involution_matters, randomise_weights, weights_matter

LAYERS = {1: Involution1d, 3: Involution3d}


def clip(n: int, c: int, dims: int, size: int, seed: int = 0, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(n, c, *(size,) * dims, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last and dims == 3 else x


@pytest.mark.parametrize(
    "dims, kwargs, size, out_shape",
    [
        (1, {"kernel_size": 7, "stride": 2}, (101,), (2, 32, 51)),
        (1, {"kernel_size": 3, "dilation": 2, "out_channels": 48}, (20,), (2, 48, 20)),
        (3, {"kernel_size": 3, "stride": (1, 2, 2)}, (5, 9, 8), (2, 32, 5, 5, 4)),
        (3, {"kernel_size": (1, 3, 5), "groups": 8}, (4, 6, 7), (2, 32, 4, 6, 7)),
        (3, {"kernel_size": 3, "stride": 2, "dilation": (1, 2, 1)}, (7, 7, 7), (2, 32, 4, 4, 4)),
    ],
)
def test_output_and_kernel_shapes(dims, kwargs, size, out_shape):
    layer = LAYERS[dims](32, **kwargs)
    x = torch.randn(2, 32, *size)
    assert layer(x).shape == out_shape
    kernels = layer.generate_kernel(x)
    assert kernels.shape == (2, layer.groups, *layer.kernel_size, *out_shape[2:])


@pytest.mark.parametrize("dims", [1, 3])
def test_the_layer_is_the_generator_then_the_op(dims):
    layer = randomise_weights(LAYERS[dims](16, kernel_size=3, stride=2)).eval()
    x = clip(2, 16, dims, 7, seed=1)
    op = involution1d if dims == 1 else involution3d
    with torch.no_grad():
        expect = op(x, layer.generate_kernel(x), layer.stride, layer.padding, layer.dilation)
        torch.testing.assert_close(layer(x), expect)


@pytest.mark.parametrize("dims", [1, 3])
def test_recomputing_the_kernels_gives_the_same_gradients(dims):
    base = randomise_weights(LAYERS[dims](16, kernel_size=3))
    twin = LAYERS[dims](16, kernel_size=3, recompute_kernel=False)
    twin.load_state_dict(base.state_dict())
    x = clip(2, 16, dims, 6, seed=2).requires_grad_()
    grads = []
    for layer in (base, twin):
        out = layer(x)
        grads.append(torch.autograd.grad(out.square().sum(), (x, *layer.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_channels_last_3d_goes_through_and_matches():
    layer = randomise_weights(Involution3d(16, kernel_size=3)).eval()
    x = clip(2, 16, 3, 6, seed=3)
    with torch.no_grad():
        plain = layer(x)
        fast = layer.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize("dims", [1, 3])
def test_the_layer_is_translation_equivariant_along_each_axis(dims):
    layer = randomise_weights(LAYERS[dims](8, kernel_size=3)).eval()
    x = clip(1, 8, dims, 12, seed=4)
    with torch.no_grad():
        out = layer(x)
        for axis in range(2, 2 + dims):
            inner = (slice(None), slice(None), *([slice(3, -3)] * dims))
            torch.testing.assert_close(layer(x.roll(2, axis))[inner], out.roll(2, axis)[inner])


def test_bad_configurations_and_inputs_are_named():
    with pytest.raises(ValueError, match="coord_channels is offered by Involution2d only"):
        Involution3d(16, coord_channels=True)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Involution1d(16, kernel_size=4)
    with pytest.raises(TypeError, match="kernel_size must be an int or 3 ints"):
        Involution3d(16, kernel_size=(3, 3))
    with pytest.raises(ValueError, match=r"Involution3d expects input \(N, 16, D, H, W\), got \(2, 16, 5, 5\)"):
        Involution3d(16)(torch.randn(2, 16, 5, 5))
    with pytest.raises(ValueError, match=r"Involution1d expects input \(N, 16, L\)"):
        Involution1d(16)(torch.randn(2, 8, 5))


class _Net(nn.Module):
    """Two involutions (one strided) around a norm and an activation: what an exported network holds."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        layer, norm = LAYERS[dims], (nn.BatchNorm1d if dims == 1 else nn.BatchNorm3d)
        self.body = nn.Sequential(layer(16, kernel_size=3, stride=2), norm(16), nn.ReLU(), layer(16, kernel_size=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _exported(dims: int) -> tuple[nn.Module, torch.export.ExportedProgram]:
    example = clip(2, 16, dims, 8)
    net = weights_matter(_Net(dims), run=lambda m: m(example))  # the norm centred: the ReLU keeps every channel
    auto = torch.export.Dim.AUTO
    program = torch.export.export(net, (example,), dynamic_shapes=({0: auto, **{
        2 + i: auto for i in range(dims)}},))
    return net, program


@pytest.mark.parametrize("dims", [1, 3])
def test_torch_export_matches_eager_at_other_sizes(dims):
    net, program = _exported(dims)
    x = clip(3, 16, dims, 11, seed=5)  # other batch, odd size: the strided layer's ceil pooling
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x))
    assert_every_involution_matters(net, lambda m: m(x), rtol=1.3e-6, atol=1e-5)  # assert_close's tolerance


@pytest.mark.parametrize("onnx_ops", ["standard", "custom"])
@pytest.mark.parametrize("dims", [1, 3])
def test_onnx_matches_eager_at_other_sizes(dims, onnx_ops, tmp_path, request):
    """Standard operators only, or one custom node per layer (``Involution2d`` for the 1-D layers, traced into the
    2-D op; ``Involution3d`` for the 3-D ones) run by onnxruntime with the custom-op library."""
    require_or_skip("onnxscript")
    ort = require_or_skip("onnxruntime")
    from involution.ops import onnxruntime_library
    from involution.ops.onnx import onnx_decompositions, onnx_translation_table

    custom = onnx_ops == "custom"
    if custom:
        request.getfixturevalue("ort_library")  # skips, saying why, where the library cannot be built
    net, program = _exported(dims)
    onnx_program = torch.onnx.export(program.run_decompositions(onnx_decompositions(onnx_ops)), dynamo=True,
                                     custom_translation_table=onnx_translation_table(onnx_ops), optimize=False,
                                     verbose=False)
    nodes = onnx_program.model_proto.graph.node
    custom_nodes = [n.op_type for n in nodes if n.domain == onnxruntime_library.DOMAIN]
    assert all(n.domain in ("", "ai.onnx", onnxruntime_library.DOMAIN) for n in nodes)
    expected = {1: onnxruntime_library.OP_TYPE, 3: onnxruntime_library.OP_TYPE_3D}[dims]
    assert custom_nodes == ([expected] * 2 if custom else [])  # one node per layer
    path = tmp_path / "net.onnx"
    onnx_program.save(str(path))
    session = ort.InferenceSession(str(path), onnxruntime_library.session_options(register_library=custom),
                                   providers=["CPUExecutionProvider"])
    x = clip(3, 16, dims, 11, seed=6)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), net(x), rtol=1e-4, atol=1e-4)
    assert_every_involution_matters(net, lambda m: m(x), rtol=1e-4, atol=1e-4)
