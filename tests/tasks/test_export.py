"""Deployment export: ONNX parity in onnxruntime, torch.export save/load, the `involution export` command, errors."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from backend_requirements import require_or_skip

require_or_skip("onnx")
require_or_skip("onnxscript")
ort = require_or_skip("onnxruntime")

from model_weights import assert_every_involution_matters, weights_matter  # noqa: E402

from involution.cli import main  # noqa: E402
from involution.layers import Involution2d, Involution3d  # noqa: E402
from involution.models import create_model, save_checkpoint  # noqa: E402
from involution.ops import onnxruntime_library  # noqa: E402
from involution.tasks.deploy import (  # noqa: E402
    ExportCheck, check_exported_program, check_onnx, check_openvino, export_model)
from involution.tasks.deploy import export as export_task  # noqa: E402
from involution.tasks.deploy.shapes import random_input  # noqa: E402

# An export agrees with eager PyTorch to float32 rounding: its largest error at most this much of the largest
# output. Relative to the output's own scale (never to at least 1, which let outputs of 0.24-0.43 off with 2-4x the
# tolerance), so that removing any one involution layer moves the output by more than 10x it (asserted below).
RTOL = 1e-4


def _within_tolerance(check) -> bool:
    return check.max_abs_error <= RTOL * check.max_abs_value


def _weights_matter(model, seed: int, shape):
    """``model`` under weights_matter, centred on the checks' random input of ``shape`` (tests/model_weights.py)."""
    x = random_input(shape)
    return weights_matter(model, seed, run=lambda m: m(x))


def _logged_check(lines: list[str]) -> ExportCheck:
    """The comparison with eager PyTorch that ``export_model`` ran before writing, read back from its last log
    line (``ExportCheck.__str__``): its input shape, error and output scale, without running it a second time."""
    found = re.search(r"(\S+) vs eager on input \(([\d, ]+)\): max abs error (\S+) \(outputs up to (\S+)\)",
                      lines[-1])
    assert found, lines
    shape = tuple(int(n) for n in found[2].split(","))
    return ExportCheck(shape, float(found[3]), float(found[4]), found[1])


def _every_involution_matters(model, shape, every: int = 1) -> None:
    """Silencing any involution of ``model`` moves its output on the checks' input of ``shape`` by > 10 RTOL."""
    x = random_input(shape)
    assert_every_involution_matters(model, lambda m: m(x), rtol_max=RTOL, every=every)


@pytest.fixture(scope="module")
def rednet26(tmp_path_factory):
    """A RedNet-26 whose every involution matters (eval mode) and its safetensors checkpoint."""
    model = _weights_matter(create_model("rednet26"), 0, (2, 3, 64, 64))
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "rednet26.safetensors")
    return model, path


@pytest.fixture(scope="module")
def cli_onnx(rednet26, tmp_path_factory):
    """`involution export` of the RedNet-26 checkpoint to ONNX at 64x64: (exit code, stdout, path)."""
    _, ckpt = rednet26
    out = tmp_path_factory.mktemp("onnx") / "rednet26.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--model", "rednet26", "--checkpoint", str(ckpt), "--format", "onnx",
                     "--out", str(out), "--input-size", "3", "64", "64"])
    return code, stdout.getvalue(), out


def test_cli_export_onnx_end_to_end(cli_onnx):
    code, stdout, out = cli_onnx
    assert code == 0, stdout
    assert out.is_file() and "onnx.checker passed" in stdout
    assert "onnxruntime vs eager" in stdout and "max abs error" in stdout


def test_rednet26_onnx_matches_eager_at_another_batch_and_size(cli_onnx, rednet26):
    model, _ = rednet26
    _, _, out = cli_onnx
    check = check_onnx(out, model, (3, 3, 72, 88))
    assert _within_tolerance(check), check
    _every_involution_matters(model, (3, 3, 72, 88))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]


def test_dense_backbone_onnx_matches_eager(tmp_path):
    backbone = create_model("rednet26", features_only=True, out_indices=(1, 2, 3), width=0.25)
    backbone = _weights_matter(backbone, 1, (1, 3, 96, 80))
    out = export_model(backbone, tmp_path / "backbone.onnx", input_size=(3, 64, 64), verify=False)
    check = check_onnx(out, backbone, (1, 3, 96, 80))  # batch 1 and a non-square size the export never saw
    assert _within_tolerance(check), check
    _every_involution_matters(backbone, (1, 3, 96, 80))


def test_cli_export_with_the_custom_op_matches_eager(ort_library, rednet26, tmp_path):
    model, ckpt = rednet26
    out = tmp_path / "rednet26_custom.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--model", "rednet26", "--checkpoint", str(ckpt), "--out", str(out),
                     "--onnx-ops", "custom", "--input-size", "3", "64", "64"])
    assert code == 0 and "onnxruntime vs eager" in stdout.getvalue(), stdout.getvalue()
    import onnx

    graph = onnx.load(str(out)).graph
    custom = [n for n in graph.node if n.domain == onnxruntime_library.DOMAIN]
    assert len(custom) == sum(isinstance(m, Involution2d) for m in model.modules())  # one node per layer
    check = check_onnx(out, model, (2, 3, 80, 56))
    assert _within_tolerance(check), check
    _every_involution_matters(model, (2, 3, 80, 56))


def test_dense_backbone_with_the_custom_op_matches_eager(ort_library, tmp_path):
    backbone = create_model("rednet26", features_only=True, out_indices=(1, 2, 3), width=0.25)
    backbone = _weights_matter(backbone, 4, (3, 3, 72, 104))
    out = export_model(backbone, tmp_path / "backbone.onnx", input_size=(3, 64, 64), onnx_ops="custom",
                       verify=False)
    check = check_onnx(out, backbone, (3, 3, 72, 104))
    assert _within_tolerance(check), check
    _every_involution_matters(backbone, (3, 3, 72, 104))


def test_exported_program_roundtrip_in_a_fresh_process(tmp_path):
    # a single layer: its output is the output, so it matters; centred on the example input
    layer = _weights_matter(torch.nn.Sequential(Involution2d(16, kernel_size=3, stride=2, group_channels=4)), 2,
                            (2, 16, 20, 20))
    lines: list[str] = []
    out = export_model(layer, tmp_path / "layer.pt2", format="exported-program", input_size=(16, 20, 20),
                       log=lines.append)
    assert "torch.export vs eager" in lines[-1]
    x = torch.randn(3, 16, 23, 17)
    with torch.no_grad():
        torch.save({"x": x, "y": layer(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, involution  # importing involution registers the op the program calls
        program = torch.export.load({str(out)!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        torch.testing.assert_close(program.module()(io["x"]), io["y"], atol=1e-5, rtol=1e-5)
        print("roundtrip ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "roundtrip ok" in done.stdout, done.stderr[-2000:]


# Every RedNet's stride-2 involutions once exported wrongly to ONNX (the generator's ceil-mode pooling lost its
# divisor); fresh RedNets could not show it, since their residual branches start at zero.
STRIDED_SIZES = [(3, 64, 48, 32), (1, 64, 15, 15), (2, 64, 47, 31), (4, 64, 16, 16)]


@pytest.mark.parametrize("target", ["standard", "custom", "exported-program"])
def test_strided_layer_with_trained_weights_matches_eager(target, tmp_path, request):
    if target == "custom":
        request.getfixturevalue("ort_library")
    layer = _weights_matter(Involution2d(64, kernel_size=7, stride=2), 5, (2, 64, 16, 16))  # the export's example
    fmt, ops = ("exported-program", "standard") if target == "exported-program" else ("onnx", target)
    out = export_model(layer, tmp_path / f"layer.{'pt2' if fmt != 'onnx' else 'onnx'}", format=fmt, onnx_ops=ops,
                       input_size=(64, 16, 16))
    check = check_onnx if fmt == "onnx" else check_exported_program
    for shape in STRIDED_SIZES:  # even and odd sizes, batch 1 too
        result = check(out, layer, shape)
        assert _within_tolerance(result), result
        assert result.max_abs_value > 1.0  # the comparison is not of near-zero outputs


def test_ceil_mode_pooling_exports_to_onnx(tmp_path):
    from involution.layers.pool import CeilAvgPool2d

    pool = CeilAvgPool2d((2, 3))
    out = export_model(pool, tmp_path / "pool.onnx", input_size=(4, 12, 12))
    for shape in [(1, 4, 13, 11), (2, 4, 12, 12), (3, 4, 7, 5)]:
        result = check_onnx(out, pool, shape)
        assert result.max_abs_error <= 1e-6, result


@pytest.mark.parametrize("name, kwargs", [
    ("rednet26_small", {"num_classes": 10, "width": 0.25}),
    ("resnet26_small", {"num_classes": 10, "width": 0.25}),
])
def test_small_families_with_trained_weights_export_both_formats(name, kwargs, tmp_path):
    shapes = [(1, 3, 24, 24), (3, 3, 21, 17)]  # 8x8 (a 1x1 last map) is issue 21
    model = _weights_matter(create_model(name, **kwargs), 6, shapes[0])
    for fmt in ("onnx", "exported-program"):
        out = export_model(model, tmp_path / f"{name}.{fmt}", format=fmt, input_size=(3, 16, 16))
        check = check_onnx if fmt == "onnx" else check_exported_program
        for shape in shapes:
            result = check(out, model, shape)
            assert _within_tolerance(result), (fmt, result)
    if name.startswith("rednet"):
        for shape in shapes:
            _every_involution_matters(model, shape)


@pytest.mark.parametrize("fmt", ["exported-program", "onnx"])
def test_small_model_exports_at_its_smallest_input(fmt, tmp_path):
    """At 8x8 a RedNet-small's last map is 1x1, which torch.export cannot keep dynamic: the export fixes height and
    width (saying so), keeps the batch dynamic, and matches eager (issue 21: it used to fail its own check)."""
    model = _weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), 9, (5, 3, 8, 8))
    assert model.pretrained_cfg["min_input_size"] == (3, 8, 8)
    lines: list[str] = []
    out = export_model(model, tmp_path / f"small.{fmt}", format=fmt, input_size=(3, 8, 8), log=lines.append)
    assert any("cannot keep a size of 1" in line for line in lines) and "vs eager" in lines[-1], lines
    check = check_onnx if fmt == "onnx" else check_exported_program
    result = check(out, model, (5, 3, 8, 8))
    assert _within_tolerance(result), result
    _every_involution_matters(model, (5, 3, 8, 8))


@pytest.mark.parametrize("fmt, onnx_ops", [("onnx", "standard"), ("onnx", "custom"), ("exported-program", "standard"),
                                           ("openvino", "custom")])
def test_clip_model_exports_with_dynamic_frames(fmt, onnx_ops, tmp_path, request):
    """A video model (input (N, C, T, H, W)) exports at its cfg's clip size with batch, frames, height and width
    dynamic, and matches eager on other clips; with the custom form (and in OpenVINO) each 3-D layer is one
    Involution3d node."""
    if onnx_ops == "custom":  # skips, saying why, where the library cannot be built
        request.getfixturevalue("ov_library" if fmt == "openvino" else "ort_library")
    shapes = [(3, 3, 10, 40, 48), (1, 3, 8, 32, 32)]
    model = _weights_matter(create_model("video_rednet_tiny", num_classes=7), 11, shapes[0])
    lines: list[str] = []
    suffix = {"onnx": "onnx", "exported-program": "pt2", "openvino": "xml"}[fmt]
    out = export_model(model, tmp_path / f"clip.{suffix}", onnx_ops=onnx_ops, log=lines.append)
    assert "(2, 3, 8, 32, 32) (dynamic batch, frames, height, width)" in "\n".join(lines), lines
    check = {"onnx": check_onnx, "exported-program": check_exported_program, "openvino": check_openvino}[fmt]
    for shape in shapes:
        result = check(out, model, shape)
        assert _within_tolerance(result), (fmt, onnx_ops, result)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(out))
        assert [tuple(d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim)] == [
            ("batch", 3, "frames", "height", "width")]
        types = {n.op_type for n in proto.graph.node if n.domain == onnxruntime_library.DOMAIN}
        assert types == ({onnxruntime_library.OP_TYPE_3D} if onnx_ops == "custom" else set())
    if fmt == "openvino":
        import openvino as ov

        from involution.ops import openvino_library

        ir = openvino_library.add_extension(ov.Core()).read_model(str(out))
        layers = sum(isinstance(m, Involution3d) for m in model.modules())
        assert layers > 0 and sum(op.get_type_name() == "Involution3d" for op in ir.get_ordered_ops()) == layers
    _every_involution_matters(model, shapes[0])


def test_segmenter_and_detector_backbone_with_trained_weights_export(tmp_path):
    """Dense models export at a fixed size (torch.export's solver cannot yet prove the FPN's size constraints for
    dynamic shapes): the Semantic FPN with an involution neck, and a detector's backbone + involution FPN."""
    shape = (2, 3, 64, 64)  # the export's example (batch 2), which the static programs are checked on
    segmenter = _weights_matter(create_model("fpn_rednet50", num_classes=5, neck="involution", neck_channels=16,
                                             head_channels=16, backbone_kwargs={"width": 0.125}), 7, shape)
    detector = create_model("fasterrcnn_rednet50_fpn", num_classes=5, neck="involution", fpn_channels=16,
                            backbone_kwargs={"width": 0.125})
    detector.backbone = _weights_matter(detector.backbone, 8, shape)
    for name, model, fmt in [("segmenter", segmenter, "exported-program"), ("segmenter", segmenter, "onnx"),
                             ("detector_backbone", detector.backbone, "onnx")]:
        lines: list[str] = []
        export_model(model, tmp_path / f"{name}.{fmt}", format=fmt, input_size=shape[1:], dynamic=False,
                     log=lines.append)
        result = _logged_check(lines)
        assert result.input_shape == shape and _within_tolerance(result), (name, fmt, result)
    _every_involution_matters(segmenter, shape)
    _every_involution_matters(detector.backbone, shape)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        export_model("rednet26", tmp_path / "m.onnx", checkpoint=tmp_path / "missing.pth")
    code = main(["export", "--model", "rednet26", "--checkpoint", str(tmp_path / "missing.pth"),
                 "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.pth" in err and "Traceback" not in err


def test_unknown_format_and_model_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model("rednet26", tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match="unknown model"):
        export_model("rednet27", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="unknown onnx_ops 'fast'; choose one of standard, custom"):
        export_model("rednet26_small", tmp_path / "m.onnx", onnx_ops="fast")
    with pytest.raises(ValueError, match="input_size"):
        export_model("rednet26_small", tmp_path / "m.onnx", input_size=(3, 0, 8))


def test_missing_onnx_package_names_the_install(tmp_path, monkeypatch, capsys):
    real = export_task.importlib.util.find_spec
    monkeypatch.setattr(
        export_task.importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install"):
        export_model("rednet26_small", tmp_path / "m.onnx")
    code = main(["export", "--model", "rednet26_small", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "'onnx' package" in err and "pip install" in err


def test_own_checkpoint_rebuilds_its_recorded_model(tmp_path):
    tuned = weights_matter(create_model("rednet26_small", num_classes=10, width=0.25), 3)
    path = save_checkpoint(tuned, tmp_path / "tuned.safetensors")
    model = export_task.load_export_model("rednet26_small", checkpoint=path)
    assert not model.training and model.num_classes == 10
    torch.testing.assert_close(model.state_dict(), tuned.state_dict())


CLASSIFIERS = [n for n in __import__("involution").list_models() if n.startswith(("rednet", "resnet"))]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_exports_at_its_smallest_input(name, tmp_path):
    """Every registered classifier, randomised, as a program at its pretrained_cfg's smallest input (issue 21);
    ONNX of the same path is covered for the _small family above (it costs tens of seconds a model)."""
    model = create_model(name, num_classes=10, **({"width": 0.25} if name.endswith("_small") else {}))
    example = (2, *model.pretrained_cfg["min_input_size"])  # the export's example (batch 2)
    model = _weights_matter(model, 0, example)
    lines: list[str] = []
    export_model(model, tmp_path / f"{name}.pt2", format="exported-program", input_size=example[1:],
                 log=lines.append)
    result = _logged_check(lines)  # on another input where the export keeps dimensions dynamic
    assert result.runtime == "torch.export" and _within_tolerance(result), result
    if "rednet" in name:  # every 8th involution, the first and last included (up to 51 forwards a model else)
        _every_involution_matters(model, result.input_shape, every=8)
