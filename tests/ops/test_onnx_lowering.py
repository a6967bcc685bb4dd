"""The ONNX forms of involution2d alone: export a module calling the op, run it in onnxruntime at another shape.

Both forms are checked against eager PyTorch: the standard-operator graph and the one ``involution::Involution2d``
node that onnxruntime runs with the custom-op library (skipped, with the reason, where that library cannot be built).
"""

from __future__ import annotations

import pytest
import torch
from backend_requirements import require_or_skip

require_or_skip("onnx")
require_or_skip("onnxscript")
ort = require_or_skip("onnxruntime")

from involution.ops import involution2d, onnxruntime_library  # noqa: E402
from involution.ops.onnx import ONNX_OPS, onnx_decompositions, onnx_translation_table  # noqa: E402


class _Op(torch.nn.Module):
    def __init__(self, stride, padding, dilation) -> None:
        super().__init__()
        self.args = (stride, padding, dilation)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return involution2d(x, w, *self.args)


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# (channels, groups, kernel (h, w), stride, padding, dilation)
CASES = {
    "k3-s1": (8, 2, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k7-s2": (16, 1, (7, 7), (2, 2), (3, 3), (1, 1)),
    "dilated-nonsquare": (6, 3, (3, 5), (1, 1), (2, 4), (2, 2)),
    "mixed-stride-no-pad": (4, 4, (5, 3), (2, 1), (0, 0), (1, 2)),
    "k7-many-channels": (24, 2, (7, 7), (1, 1), (3, 3), (1, 1)),  # several channel blocks and a partial one
    "k1": (5, 5, (1, 1), (1, 1), (0, 0), (1, 1)),
    "stride3-asym-pad": (8, 2, (3, 3), (3, 3), (2, 1), (1, 1)),
}


@pytest.mark.parametrize("onnx_ops", ONNX_OPS)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_onnxruntime_matches_eager_at_another_shape(case, onnx_ops, tmp_path, request):
    custom = onnx_ops == "custom"
    if custom:
        request.getfixturevalue("ort_library")  # skips, saying why, where the library cannot be built
    c, g, (kh, kw), stride, padding, dilation = case

    def inputs(n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        ho = _out(h, kh, stride[0], padding[0], dilation[0])
        wo = _out(w, kw, stride[1], padding[1], dilation[1])
        gen = torch.Generator().manual_seed(n * 1000 + h)
        return torch.randn(n, c, h, w, generator=gen), torch.randn(n, g, kh, kw, ho, wo, generator=gen)

    module = _Op(stride, padding, dilation)
    auto = torch.export.Dim.AUTO
    program = torch.export.export(
        module, inputs(2, 16, 18), dynamic_shapes=({0: auto, 2: auto, 3: auto}, {0: auto, 4: auto, 5: auto})
    )
    onnx_program = torch.onnx.export(
        program, dynamo=True, custom_translation_table=onnx_translation_table(onnx_ops), optimize=False, verbose=False
    )
    path = tmp_path / "op.onnx"
    onnx_program.save(str(path))
    opts = onnxruntime_library.session_options(register_library=custom)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    nodes = onnx_program.model_proto.graph.node
    custom_nodes = [n for n in nodes if n.domain == onnxruntime_library.DOMAIN]
    if not custom:
        assert not custom_nodes  # standard ONNX only
    else:
        assert len(custom_nodes) == 1 and custom_nodes[0].op_type == onnxruntime_library.OP_TYPE

    x, w = inputs(3, 21, 13)  # other batch, odd sizes, taller than wide
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {names[0]: x.numpy(), names[1]: w.numpy()})
    expected = module(x, w)
    assert got.shape == tuple(expected.shape)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_translation_table_names_the_op():
    ops = torch.ops.involution
    assert list(onnx_translation_table("standard")) == [ops.involution2d.default, torch.ops.aten.conv3d.default]
    assert list(onnx_decompositions("standard")) == [ops.involution3d.default]  # the 3-D op as 2-D depth taps
    assert list(onnx_translation_table("custom")) == [
        ops.involution2d.default, torch.ops.aten.conv3d.default, ops.involution3d.default]
    assert not onnx_decompositions("custom")  # its own node
    with pytest.raises(ValueError, match="unknown onnx_ops 'fancy'; choose one of standard, custom"):
        onnx_translation_table("fancy")
