"""The OpenVINO extension alone: one ``involution::Involution2d`` node read from ONNX through the extension, run by
OpenVINO's CPU plugin, against the float64 oracle; its shape inference, errors, build and command line.

The whole-model path (export to an IR, ``openvino_model``, f32 and bf16 against eager PyTorch) is in
tests/tasks/test_openvino.py. Every test here takes the ``ov_library`` fixture (tests/conftest.py): it skips where
the extension cannot be built and fails instead where it is required (CI, INVOLUTION_REQUIRE_BACKENDS).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402
from op_helpers import assert_float32_accumulated  # noqa: E402
from reference import involution2d_reference, involution_nd_reference  # noqa: E402

from involution.cli import main  # noqa: E402
from involution.ops import openvino_library as lib  # noqa: E402
from involution.ops.openvino_library import build as ov_build  # noqa: E402

_ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.bfloat16: TensorProto.BFLOAT16,
               torch.float16: TensorProto.FLOAT16}


def _node_model(tmp_path, x_dims, w_dims, dtype=torch.float32, op_type=lib.OP_TYPE, **attrs):
    """An ONNX file of one ``involution::<op_type>`` node; ``x_dims``/``w_dims`` give each input dimension as a
    size or a name (dynamic)."""
    node = helper.make_node(op_type, ["X", "W"], ["Y"], domain=lib.DOMAIN, **attrs)
    kind = _ONNX_TYPES[dtype]
    graph = helper.make_graph(
        [node], "one_involution",
        [helper.make_tensor_value_info("X", kind, x_dims), helper.make_tensor_value_info("W", kind, w_dims)],
        [helper.make_tensor_value_info("Y", kind, None)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(lib.DOMAIN, 1)]
    path = tmp_path / "node.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())
    return path


@pytest.fixture(scope="module")
def core(ov_library):
    """An ``openvino.Core`` with the extension loaded."""
    import openvino as ov

    return lib.add_extension(ov.Core())


def _dynamic(g: int, k: tuple[int, int]):
    return ["n", "c", "h", "w"], ["n", g, k[0], k[1], "ho", "wo"]


def _to_ov(t: torch.Tensor):
    """A float32/bfloat16/float16 tensor as an ``openvino.Tensor`` of that type (bfloat16 copied bit for bit)."""
    import openvino as ov

    kind = {torch.float32: ov.Type.f32, torch.bfloat16: ov.Type.bf16, torch.float16: ov.Type.f16}[t.dtype]
    out = ov.Tensor(kind, list(t.shape))
    if t.dtype == torch.float32:
        out.data[...] = t.numpy()
    else:
        out.data.view(np.uint16)[...] = t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return out


def _from_ov(tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float32:
        return torch.from_numpy(np.array(tensor.data))
    return torch.from_numpy(tensor.data.view(np.int16).copy()).view(dtype)


def _run(core, path, x, w, precision="f32"):
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 2})
    request = compiled.create_infer_request()
    request.infer([_to_ov(x), _to_ov(w)])
    return _from_ov(request.get_output_tensor(0), x.dtype)


def _case(seed, n, c, g, hw, k, stride, pad, dil):
    gen = torch.Generator().manual_seed(seed)
    ho = (hw[0] + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    wo = (hw[1] + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    x = torch.randn(n, c, *hw, generator=gen)
    w = torch.randn(n, g, *k, ho, wo, generator=gen)
    return x, w


GEOMETRIES = [  # (n, c, g, (h, w), (kh, kw), stride, padding, dilation)
    (2, 16, 4, (13, 17), (7, 7), (1, 1), (3, 3), (1, 1)),
    (1, 8, 1, (20, 11), (3, 3), (2, 2), (1, 1), (1, 1)),
    (3, 6, 3, (9, 15), (3, 5), (1, 2), (2, 1), (2, 1)),
    (2, 4, 2, (31, 40), (1, 1), (1, 1), (0, 0), (1, 1)),
]


def test_all_ones_sums_the_taps_inside_the_image(core, tmp_path):
    path = _node_model(tmp_path, *_dynamic(1, (3, 3)), strides=[1, 1], pads=[1, 1], dilations=[1, 1])
    y = _run(core, path, torch.ones(1, 2, 4, 5), torch.ones(1, 1, 3, 3, 4, 5))
    # Each output counts the taps of its 3x3 window that fall inside the image (zero padding outside).
    rows = torch.tensor([2.0, 3, 3, 2])[:, None]
    cols = torch.tensor([2.0, 3, 3, 3, 2])[None, :]
    torch.testing.assert_close(y, (rows * cols).expand(1, 2, 4, 5), rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_matches_the_oracle_at_several_sizes(core, tmp_path, geometry, precision):
    """One dynamic-shape file run at two input sizes, f32 within 1e-5 of the output scale. Under the bf16 hint the
    CPU plugin keeps the node in float32 (its inputs here are float32), so the same bound holds."""
    n, c, g, hw, k, stride, pad, dil = geometry
    path = _node_model(tmp_path, *_dynamic(g, k), strides=list(stride), pads=list(pad), dilations=list(dil))
    for seed, size in enumerate([hw, (hw[0] + 5, hw[1] + 3)]):
        x, w = _case(seed, n + seed, c, g, size, k, stride, pad, dil)
        y = _run(core, path, x, w, precision)
        expected = involution2d_reference(x, w, stride, pad, dil)
        scale = float(expected.abs().max())
        assert float((y.double() - expected).abs().max()) <= 1e-5 * scale, (geometry, size, precision)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_tensors_are_summed_in_float32_and_rounded_once(core, tmp_path, dtype):
    """bf16 tensors reach the op's evaluate as bf16 (f16 ones are converted by the plugin): each output is the
    float32 sum of the products of the rounded inputs, rounded once to nearest (half an ulp of the output, plus
    the float32 sum's own error): :func:`op_helpers.assert_float32_accumulated`. A conversion that truncates, as
    ``ov::bfloat16(float)`` does for half the values, breaks this bound."""
    n, c, g, hw, k, stride, pad, dil = GEOMETRIES[0]
    path = _node_model(tmp_path, *_dynamic(g, k), dtype, strides=list(stride), pads=list(pad), dilations=list(dil))
    x, w = (t.to(dtype) for t in _case(0, n, c, g, hw, k, stride, pad, dil))
    y = _run(core, path, x, w)
    assert y.dtype == dtype
    expected = involution2d_reference(x, w, stride, pad, dil)
    magnitudes = involution2d_reference(x.abs(), w.abs(), stride, pad, dil)
    assert_float32_accumulated(y, expected, magnitudes, k[0] * k[1], msg=str(dtype))


GEOMETRIES_3D = [  # (n, c, g, (d, h, w), (kd, kh, kw), stride, padding, dilation)
    (2, 16, 4, (5, 9, 21), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (1, 6, 2, (7, 8, 9), (3, 5, 3), (2, 1, 2), (0, 2, 1), (1, 1, 2)),
]


def _case3d(seed, n, c, g, size, k, stride, pad, dil, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    out = [(size[a] + 2 * pad[a] - dil[a] * (k[a] - 1) - 1) // stride[a] + 1 for a in range(3)]
    x = torch.randn(n, c, *size, generator=gen).to(dtype)
    w = torch.randn(n, g, *k, *out, generator=gen).to(dtype)
    return x, w


@pytest.mark.parametrize("geometry", GEOMETRIES_3D)
def test_3d_node_matches_the_oracle_at_several_sizes(core, tmp_path, geometry):
    """One ``involution::Involution3d`` node with dynamic batch and sizes, f32 within 1e-5 of the output scale."""
    n, c, g, size, k, stride, pad, dil = geometry
    path = _node_model(tmp_path, ["n", c, "d", "h", "w"], ["n", g, *k, "do", "ho", "wo"], op_type=lib.OP_TYPE_3D,
                       strides=list(stride), pads=list(pad), dilations=list(dil))
    for seed, grown in enumerate([size, (size[0] + 2, size[1] + 3, size[2] + 1)]):
        x, w = _case3d(seed, n + seed, c, g, grown, k, stride, pad, dil)
        y = _run(core, path, x, w)
        expected = involution_nd_reference(x, w, stride, pad, dil)
        assert float((y.double() - expected).abs().max()) <= 1e-5 * float(expected.abs().max()), (geometry, grown)


def test_3d_bf16_tensors_are_summed_in_float32_and_rounded_once(core, tmp_path):
    n, c, g, size, k, stride, pad, dil = GEOMETRIES_3D[0]
    path = _node_model(tmp_path, ["n", c, "d", "h", "w"], ["n", g, *k, "do", "ho", "wo"], torch.bfloat16,
                       lib.OP_TYPE_3D, strides=list(stride), pads=list(pad), dilations=list(dil))
    x, w = _case3d(0, n, c, g, size, k, stride, pad, dil, torch.bfloat16)
    y = _run(core, path, x, w)
    assert y.dtype == torch.bfloat16
    expected = involution_nd_reference(x, w, stride, pad, dil)
    magnitudes = involution_nd_reference(x.abs(), w.abs(), stride, pad, dil)
    assert_float32_accumulated(y, expected, magnitudes, k[0] * k[1] * k[2], msg="bf16 3-D")


@pytest.mark.parametrize(
    ("x_dims", "w_dims", "attrs", "message"),
    [
        ([2, 8, 5, 9, 9], [2, 2, 3, 3, 3, 4, 9, 9], {}, "the weight's Do 4 does not match the input .* expected 5"),
        ([2, 8, 9, 9], [2, 2, 3, 3, 3, 5, 9, 9], {}, r"input must be \(N, C, D, H, W\)"),
        (["n", 8, "d", "h", "w"], ["n", 2, 3, 3, 3, "do", "ho", "wo"], {"pads": [1, 1]}, r"need 3 values \(d, h, w\)"),
    ],
)
def test_3d_bad_shapes_and_attributes_are_errors_that_name_them(core, tmp_path, x_dims, w_dims, attrs, message):
    attrs = {"strides": [1, 1, 1], "pads": [1, 1, 1], "dilations": [1, 1, 1], **attrs}
    with pytest.raises(Exception, match=message):
        core.read_model(str(_node_model(tmp_path, x_dims, w_dims, op_type=lib.OP_TYPE_3D, **attrs)))


def _output_shape(core, tmp_path, x_dims, w_dims, **attrs):
    model = core.read_model(str(_node_model(tmp_path, x_dims, w_dims, **attrs)))
    return str(model.output(0).get_partial_shape())


def test_shape_inference_keeps_dynamic_dimensions_and_computes_static_ones(core, tmp_path):
    attrs = {"strides": [2, 2], "pads": [1, 1], "dilations": [1, 1]}
    assert _output_shape(core, tmp_path, ["n", 8, "h", "w"], ["n", 2, 3, 3, "ho", "wo"], **attrs) == "[?,8,?,?]"
    # Ho, Wo from the input's static size: (17 + 2 - 3) // 2 + 1 = 9, (13 + 2 - 3) // 2 + 1 = 7.
    assert _output_shape(core, tmp_path, [2, 8, 17, 13], ["n", 2, 3, 3, "ho", "wo"], **attrs) == "[2,8,9,7]"
    assert _output_shape(core, tmp_path, ["n", 8, "h", "w"], [4, 2, 3, 3, 9, 7], **attrs) == "[4,8,9,7]"


@pytest.mark.parametrize(
    ("x_dims", "w_dims", "attrs", "message"),
    [
        ([2, 8, 17, 13], [2, 2, 3, 3, 8, 7], {}, "the weight's Ho 8 does not match the input .* expected 9"),
        ([2, 5, 8, 8], [2, 2, 3, 3, 4, 4], {}, "channels C=5 are not a multiple of groups G=2"),
        ([1, 8, 8, 8], [2, 2, 3, 3, 4, 4], {}, "input batch 1 != weight batch 2"),
        ([2, 8, 8], [2, 2, 3, 3, 4, 4], {}, r"input must be \(N, C, H, W\)"),
        ([2, 8, 8, 8], [2, 2, 3, 3, 4], {}, r"weight must be \(N, G, Kh, Kw, Ho, Wo\)"),
        ([2, 8, 2, 8], [2, 2, 3, 3, 1, 4], {"pads": [0, 1]}, "kernel .* is larger than the padded input"),
        (["n", 8, "h", "w"], ["n", 2, 3, 3, "ho", "wo"], {"strides": [0, 1]},
         "strides and dilations must be >= 1 and pads >= 0"),
        (["n", 8, "h", "w"], ["n", 2, 3, 3, "ho", "wo"], {"strides": [1]}, "need 2 values"),
    ],
)
def test_bad_shapes_and_attributes_are_errors_that_name_them(core, tmp_path, x_dims, w_dims, attrs, message):
    attrs = {"strides": [2, 2], "pads": [1, 1], "dilations": [1, 1], **attrs}
    with pytest.raises(Exception, match=message):
        core.read_model(str(_node_model(tmp_path, x_dims, w_dims, **attrs)))


def test_missing_openvino_says_how_to_install_it(monkeypatch):
    real = ov_build.importlib.util.find_spec
    monkeypatch.setattr(ov_build.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    assert ov_build.find_openvino() is None
    with pytest.raises(RuntimeError, match=r"'openvino' package is not installed: pip install 'involution\[openvino\]'"):
        lib.library_path()
    assert lib.status().startswith("unavailable: the OpenVINO extension cannot be built")
    assert not lib.is_available()


def test_an_openvino_without_headers_is_named(tmp_path, monkeypatch):
    fake = tmp_path / "openvino"
    (fake / "libs").mkdir(parents=True)
    spec = type("Spec", (), {"submodule_search_locations": [str(fake)]})()
    monkeypatch.setattr(ov_build.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(RuntimeError, match=r"ships no C\+\+ headers \(no .*openvino/op/op.hpp\)"):
        lib.library_path()


def test_no_compiler_is_named_but_a_built_library_needs_none(ov_library, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    install = ov_build.require_openvino()
    assert ov_build._compile(install, ov_library.parent.name) == ov_library  # cached: nothing to compile
    monkeypatch.setenv("INVOLUTION_CACHE", str(tmp_path))  # an empty build cache
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler: 'no-such-compiler' is not on PATH"):
        ov_build._compile(install, "fresh")
    assert lib.status() == "unavailable: no C++ compiler: 'no-such-compiler' is not on PATH (set CXX or install g++)"


def test_command_line_prints_the_library_path(ov_library, capsys):
    assert main(["openvino", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(ov_library)
    assert lib.status() == f"built: {ov_library}"
