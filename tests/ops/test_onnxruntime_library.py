"""The onnxruntime custom-op library: its errors, the header fetch (offline, on a package made here) and the build.

Numerical parity of the custom node with eager PyTorch is in test_onnx_lowering.py (both ONNX forms, same cases).
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest
from backend_requirements import require_or_skip

require_or_skip("onnx")
require_or_skip("onnxscript")
ort = require_or_skip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

import involution.ops.onnx  # noqa: E402, F401  (registers the custom op's schema with onnx)
from involution.cli import main  # noqa: E402
from involution.ops import onnxruntime_library as lib  # noqa: E402
from involution.ops.onnxruntime_library import build as ort_build  # noqa: E402
from involution.ops.onnxruntime_library import headers as ort_headers  # noqa: E402


def _single_node_model(op_type: str = lib.OP_TYPE, **attrs) -> bytes:
    """A graph of one ``involution::<op_type>`` node with unknown input shapes (so onnxruntime checks none)."""
    node = helper.make_node(op_type, ["X", "W"], ["Y"], domain=lib.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "one_involution",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("X", "W")],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(lib.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _run(model: bytes, x_shape, w_shape) -> np.ndarray:
    session = ort.InferenceSession(model, lib.session_options(), providers=["CPUExecutionProvider"])
    feeds = {"X": np.ones(x_shape, np.float32), "W": np.ones(w_shape, np.float32)}
    return session.run(None, feeds)[0]


def test_all_ones_sums_the_taps_inside_the_image(ort_library):
    model = _single_node_model(strides=[1, 1], pads=[1, 1], dilations=[1, 1])
    y = _run(model, (1, 2, 4, 5), (1, 1, 3, 3, 4, 5))
    # Each output counts the taps of its 3x3 window that fall inside the image (zero padding outside).
    rows = np.array([2, 3, 3, 2], np.float32)[:, None]
    cols = np.array([2, 3, 3, 3, 2], np.float32)[None, :]
    np.testing.assert_array_equal(y, np.broadcast_to(rows * cols, (1, 2, 4, 5)))


def test_3d_all_ones_sums_the_taps_inside_the_volume(ort_library):
    model = _single_node_model(lib.OP_TYPE_3D, strides=[1, 1, 1], pads=[1, 1, 1], dilations=[1, 1, 1])
    y = _run(model, (1, 2, 3, 4, 5), (1, 1, 3, 3, 3, 3, 4, 5))
    # Each output counts the taps of its 3x3x3 window that fall inside the volume.
    depth = np.array([2, 3, 2], np.float32)[:, None, None]
    rows = np.array([2, 3, 3, 2], np.float32)[None, :, None]
    cols = np.array([2, 3, 3, 3, 2], np.float32)[None, None, :]
    np.testing.assert_array_equal(y, np.broadcast_to(depth * rows * cols, (1, 2, 3, 4, 5)))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "message"),
    [
        ((2, 4, 3, 8, 8), (2, 2, 3, 3, 3, 3, 7, 8),
         r"Involution3d: weight shape \(2, 2, 3, 3, 3, 3, 7, 8\) does not match .* \(Do, Ho, Wo\) = \(3, 8, 8\)"),
        ((2, 4, 8, 8), (2, 2, 3, 3, 3, 3, 8, 8), r"Involution3d: input must be \(N, C, D, H, W\)"),
        ((2, 4, 3, 8, 8), (2, 2, 3, 3, 8, 8), r"weight must be \(N, G, Kd, Kh, Kw, Do, Ho, Wo\)"),
    ],
)
def test_3d_bad_shapes_are_errors_that_name_them(ort_library, x_shape, w_shape, message):
    model = _single_node_model(lib.OP_TYPE_3D, strides=[1, 1, 1], pads=[1, 1, 1], dilations=[1, 1, 1])
    with pytest.raises(Exception, match=message):
        _run(model, x_shape, w_shape)


def test_3d_attributes_need_three_values(ort_library):
    model = _single_node_model(lib.OP_TYPE_3D, strides=[1, 1], pads=[1, 1, 1], dilations=[1, 1, 1])
    with pytest.raises(Exception, match=r"Involution3d: attribute strides needs 3 values \(d, h, w\), got 2"):
        _run(model, (1, 2, 3, 4, 5), (1, 1, 3, 3, 3, 3, 4, 5))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "message"),
    [
        ((2, 4, 8, 8), (2, 2, 3, 3, 7, 8), r"weight shape \(2, 2, 3, 3, 7, 8\) does not match input .*\(8, 8\)"),
        ((2, 5, 8, 8), (2, 2, 3, 3, 8, 8), "channels C=5 are not a multiple of groups G=2"),
        ((1, 4, 8, 8), (2, 2, 3, 3, 8, 8), "input batch 1 != weight batch 2"),
        ((4, 8, 8), (2, 2, 3, 3, 8, 8), r"input must be \(N, C, H, W\), got shape \(4, 8, 8\)"),
        ((2, 4, 8, 8), (2, 2, 3, 8, 8), r"weight must be \(N, G, Kh, Kw, Ho, Wo\)"),
    ],
)
def test_bad_shapes_are_errors_that_name_them(ort_library, x_shape, w_shape, message):
    model = _single_node_model(strides=[1, 1], pads=[1, 1], dilations=[1, 1])
    with pytest.raises(Exception, match=message):
        _run(model, x_shape, w_shape)


def test_bad_attributes_are_errors_that_name_them(ort_library):
    for attrs, message in [
        (dict(strides=[0, 1], pads=[1, 1], dilations=[1, 1]), "strides and dilations must be >= 1"),
        (dict(strides=[1], pads=[1, 1], dilations=[1, 1]), "strides needs 2 values"),
    ]:
        with pytest.raises(Exception, match=message):
            _run(_single_node_model(**attrs), (1, 2, 6, 6), (1, 1, 3, 3, 6, 6))


def test_missing_headers_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("INVOLUTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("INVOLUTION_ORT_INCLUDE", str(tmp_path / "nowhere"))
    monkeypatch.setattr(ort_headers, "candidates", lambda: [tmp_path / "nowhere", tmp_path / "cache" / "include"])
    assert lib.find_headers() is None
    with pytest.raises(RuntimeError, match="headers were not found.*fetch-headers"):
        lib.library_path()
    assert "INVOLUTION_ORT_INCLUDE" in lib.unavailable_reason()
    assert not lib.is_available()
    assert lib.status().startswith("unavailable: no onnxruntime headers")


def _fake_deb(files: dict[str, bytes]) -> bytes:
    """A minimal .deb: an ar archive whose data.tar.xz holds ``files`` (paths relative to the root)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": tar_bytes.getvalue()}
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetch_headers_checks_the_hash_and_extracts_only_the_headers(tmp_path, monkeypatch):
    deb = _fake_deb({
        "usr/include/onnxruntime/onnxruntime_cxx_api.h": b"// cxx api\n",
        "usr/include/onnxruntime/core/session/extra.h": b"// nested\n",
        "usr/share/doc/libonnxruntime-dev/copyright": b"not a header",
    })
    monkeypatch.setattr(ort_headers.urllib.request, "urlopen", lambda url, timeout: _Response(deb))

    with pytest.raises(RuntimeError, match="(?s)SHA-256 .* expected .*INVOLUTION_ORT_INCLUDE"):
        lib.fetch_headers(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    monkeypatch.setattr(ort_headers, "_DEB_SHA256", hashlib.sha256(deb).hexdigest())
    dest = lib.fetch_headers(tmp_path / "include")
    assert (dest / "onnxruntime_cxx_api.h").read_bytes() == b"// cxx api\n"
    assert (dest / "core" / "session" / "extra.h").is_file()
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["extra.h", "onnxruntime_cxx_api.h"]
    assert lib.fetch_headers(tmp_path / "include") == dest  # already there: nothing fetched


def test_unreachable_mirrors_are_named(tmp_path, monkeypatch):
    def refuse(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(ort_headers.urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError, match="(?s)deb.debian.org.*network is unreachable"):
        lib.fetch_headers(tmp_path / "include")


def test_a_package_without_the_headers_is_refused(tmp_path):
    deb = _fake_deb({"usr/share/doc/readme": b"x"})
    (tmp_path / "include").mkdir()
    with pytest.raises(ValueError, match="holds no onnxruntime_cxx_api.h"):
        ort_headers._extract_headers(deb, tmp_path / "include")
    with pytest.raises(ValueError, match="not an ar archive"):
        ort_headers._extract_headers(b"PK\x03\x04", tmp_path / "include")


def test_command_line_prints_the_library_path(ort_library, capsys):
    assert main(["onnxruntime", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(ort_library)
    assert lib.status() == f"built: {ort_library}"


def test_no_compiler_is_named_but_a_built_library_needs_none(ort_library, tmp_path, monkeypatch):
    headers = lib.find_headers()
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert ort_build._compile(headers, ort_library.parent.name) == ort_library  # cached: nothing to compile
    monkeypatch.setenv("INVOLUTION_CACHE", str(tmp_path))  # an empty build cache (the headers stay where they are)
    monkeypatch.setattr(lib, "find_headers", lambda: headers)
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler: 'no-such-compiler' is not on PATH"):
        ort_build._compile(headers, "fresh")
    assert lib.status() == "unavailable: no C++ compiler: 'no-such-compiler' is not on PATH (set CXX or install g++)"
