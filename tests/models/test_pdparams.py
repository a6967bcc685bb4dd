"""PaddleClas ``.pdparams`` files: read without PaddlePaddle, refused when they hold code, parity with PaddleClas.

``data/paddleclas/`` holds what PaddlePaddle 3.3.1 itself wrote and computed, outside this repository:

* ``small_p{2,3,4}.pdparams`` (numpy 2) and ``small_np1_p{2,4}.pdparams`` (numpy 1.26): ``paddle.save`` of a tiny
  network's state dict in each pickle protocol, with the values in ``small.json``;
* ``rednet_paddleclas_parity.json``: PaddleClas's RedNet-26 logits on the official parity's seeded weights
  (``_rednet_parity.py``; every BN random, so every involution matters), the key list of every depth, and the
  internal-name table of the file PaddlePaddle wrote.

The parity file itself (37 MB) is not committed: :func:`write_pdparams` writes it again here. It writes what
``paddle.save`` writes: byte for byte for the small files (tested below) and for the parity file (checked once,
with numpy 2.4.6, against the file PaddlePaddle wrote).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _rednet_parity import load_reference, seeded_state_dict
from backend_requirements import require_or_skip

from involution.cli import main
from involution.models import (
    convert_checkpoint,
    create_model,
    load_checkpoint,
    load_model,
    official_to_ours,
    ours_to_paddleclas,
    read_checkpoint,
    read_pdparams,
)
from involution.models.pdparams import NAME_TABLE
from model_weights import assert_every_involution_matters

DATA = Path(__file__).parent / "data" / "paddleclas"
SMALL = json.loads((DATA / "small.json").read_text())
PARITY = json.loads((DATA / "rednet_paddleclas_parity.json").read_text())
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
DEPTHS = (26, 38, 50, 101, 152)


def write_pdparams(path: Path, arrays: dict[str, np.ndarray], names: dict[str, str], protocol: int = 4) -> Path:
    """What ``paddle.save(state_dict, path, protocol)`` writes: one pickle of the arrays and the name table.

    The table's keys are the very string objects of the arrays' keys, as in Paddle's dict: the pickle then refers
    back to them instead of writing them twice, and the bytes come out identical to Paddle's.
    """
    table = {k: names[k] for k in arrays if k in names}
    with open(path, "wb") as f:
        pickle.dump({**arrays, NAME_TABLE: table}, f, protocol=protocol)
    return path


def small_values() -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in SMALL["values"].items()}


def parity_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 96, 64)


@pytest.fixture(scope="module")
def paddleclas_file(tmp_path_factory) -> Path:
    """The official parity's seeded RedNet-26 weights in PaddleClas's layout, keys in Paddle's order."""
    ref = load_reference()["models"]["rednet26"]
    official = seeded_state_dict({k: s for k, s in ref["keys"]}, seed=PARITY["seed"])
    paddle = ours_to_paddleclas(official_to_ours(official)[0])
    order = [k for k, _ in PARITY["keys"]["rednet26"]]
    arrays = {k: paddle[k].numpy() for k in order}
    return write_pdparams(tmp_path_factory.mktemp("paddleclas") / "RedNet26_pretrained.pdparams", arrays,
                          PARITY["name_table"])


# -- the file format -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_p2", "small_p3", "small_p4", "small_np1_p2", "small_np1_p4"])
def test_reads_files_paddle_wrote(name):
    tensors = read_pdparams(DATA / f"{name}.pdparams")
    expect = small_values()
    assert list(tensors) == list(expect)  # the name table is no weight
    for key, value in expect.items():
        assert tensors[key].dtype == torch.float32 and tensors[key].is_contiguous()
        torch.testing.assert_close(tensors[key], torch.from_numpy(value), rtol=0, atol=0)
    tensors["0.weight"].add_(1)  # owned, writable memory


@pytest.mark.skipif(not NUMPY_2, reason="the committed files were pickled by numpy 2 (numpy._core names)")
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_the_writer_here_writes_what_paddle_save_writes(tmp_path, protocol):
    path = write_pdparams(tmp_path / "small.pdparams", small_values(), SMALL["name_table"], protocol)
    assert path.read_bytes() == (DATA / f"small_p{protocol}.pdparams").read_bytes()


def test_read_checkpoint_recognises_a_paddle_pickle_without_the_suffix(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes((DATA / "small_p4.pdparams").read_bytes())
    state_dict, metadata = read_checkpoint(path)
    assert sorted(state_dict) == sorted(SMALL["values"]) and metadata == {}


# -- parity with PaddleClas -------------------------------------------------------------------------------------------


def test_parity_with_paddleclas(paddleclas_file):
    """PaddleClas's RedNet-26 logits, from its own file format and key names, to 1e-5."""
    model = create_model("rednet26", checkpoint=paddleclas_file).eval()
    with torch.no_grad():
        logits = model(parity_input())
    expect = torch.tensor(PARITY["logits"])
    torch.testing.assert_close(logits, expect, rtol=0, atol=1e-5)

    # every involution layer moves the logits far beyond that tolerance (100x): a wrong one cannot pass
    assert_every_involution_matters(model, lambda m: m(parity_input()), atol=1e-5, margin=100)


def test_load_report_names_the_layout(paddleclas_file):
    report = load_checkpoint(create_model("rednet26"), paddleclas_file)
    assert report.layout == "paddleclas" and not report.head_reinitialised and not report.ignored


@pytest.mark.parametrize("depth", DEPTHS)
def test_keys_and_shapes_of_every_depth_map_onto_ours(depth):
    with torch.device("meta"):
        ours = create_model(f"rednet{depth}").state_dict()
    theirs = {k: s for k, s in PARITY["keys"][f"rednet{depth}"]}
    assert {k: list(v.shape) for k, v in ours_to_paddleclas(ours).items()} == theirs


def test_a_file_of_another_depth_is_refused_listing_the_keys(paddleclas_file):
    with pytest.raises(RuntimeError) as err:
        create_model("rednet38", checkpoint=paddleclas_file)
    text = str(err.value)
    assert str(paddleclas_file) in text and "missing keys" in text and "layer1.1.conv1.weight" in text


def test_another_class_count_keeps_the_body(paddleclas_file):
    with pytest.warns(UserWarning, match="classifier does not match"):
        model = create_model("rednet26", num_classes=10, checkpoint=paddleclas_file)
    stored = read_pdparams(paddleclas_file)
    torch.testing.assert_close(model.layer3[1].conv2.conv2.conv.weight, stored["layer3.1.conv2.conv2.conv.weight"])
    torch.testing.assert_close(model.stem[2].running_var, stored["stem.2._variance"])


def test_features_only_backbone_loads_it(paddleclas_file):
    backbone = create_model("rednet26", features_only=True, out_indices=(1, 2), checkpoint=paddleclas_file)
    stored = read_pdparams(paddleclas_file)
    torch.testing.assert_close(backbone.layer2[0].bn3.running_mean, stored["layer2.0.bn3._mean"])


def test_convert_to_safetensors(paddleclas_file, tmp_path, capsys):
    dst = tmp_path / "rednet26.safetensors"
    assert main(["convert", str(paddleclas_file), str(dst)]) == 0
    assert str(dst) in capsys.readouterr().out
    model = load_model(dst).eval()
    assert model.model_name == "rednet26"
    with torch.no_grad():
        torch.testing.assert_close(model(parity_input()), torch.tensor(PARITY["logits"]), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not an official mmcls or PaddleClas RedNet checkpoint"):
        convert_checkpoint(dst, tmp_path / "again.safetensors")


# -- hostile and damaged files -----------------------------------------------------------------------------------------


class _Runs:
    """Unpickling this would run ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_payloads(marker: Path) -> dict[str, object]:
    run = _Runs(os.system, f"touch {marker}")
    array = np.empty(2, dtype=object)
    array[:] = [1.0, run]  # an object array's state holds its Python objects
    return {
        "top level": run,
        "beside weights": {"fc.weight": np.zeros((2, 2), np.float32), "fc.bias": run},
        "nested": {"fc.weight": np.zeros((2, 2), np.float32), NAME_TABLE: {"fc.weight": [run]}},
        "inside an object array": {"fc.weight": array},
    }


@pytest.mark.parametrize("case", ["top level", "beside weights", "nested", "inside an object array"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, case, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "RedNet26_pretrained.pdparams"
    path.write_bytes(pickle.dumps(_hostile_payloads(marker)[case], protocol=protocol))
    with pytest.raises(ValueError, match=r"refused to load: its pickle names posix\.system") as err:
        create_model("rednet26_small", width=0.25, checkpoint=path)
    assert str(path) in str(err.value) and "nothing from the file was run" in str(err.value)
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    path = tmp_path / "w.pdparams"
    path.write_bytes(pickle.dumps({"fc.weight": _Runs(eval, "1 + 1")}, protocol=4))
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        read_pdparams(path)
    path.write_bytes(pickle.dumps({"fc.weight": _Runs(pickle.loads, b"")}, protocol=2))
    with pytest.raises(ValueError, match=r"pickle\.loads"):
        read_pdparams(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated or corrupt"),
        (None, "truncated or corrupt"),  # the real file, cut short
        (pickle.dumps([np.zeros(2)], protocol=4), "expected a dict of arrays"),
        (pickle.dumps({"a": np.array(["x"])}, protocol=4), "entry 'a' is an array of <U1, not numbers"),
        (pickle.dumps({"a": 1.0, NAME_TABLE: {}}, protocol=4), "no arrays found"),
    ],
    ids=["empty", "cut short", "a list", "strings", "no arrays"],
)
def test_damaged_or_foreign_content_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "broken.pdparams"
    path.write_bytes(content if content is not None else (DATA / "small_p4.pdparams").read_bytes()[:400])
    with pytest.raises(ValueError, match=message) as err:
        create_model("rednet26_small", width=0.25, checkpoint=path)
    assert str(path) in str(err.value)


_RECONSTRUCT = (getattr(np, "_core", None) or np.core).multiarray._reconstruct


def _array_claims() -> dict[str, object]:
    """Pickled arrays that claim more than their file holds, each built the ways a pickle can ask numpy for one."""
    def claim(shape, dtype="f4"):  # _reconstruct(ndarray, (0,), b"b"), then a state naming the shape
        return _Runs(_RECONSTRUCT, np.ndarray, (0,), b"b"), (1, shape, np.dtype(dtype), False, b"\0" * 8)

    return {
        "1e13 elements by _reconstruct": _Runs(_RECONSTRUCT, np.ndarray, (10**13,), b"b"),
        "3e9 elements by _reconstruct": _Runs(_RECONSTRUCT, np.ndarray, (3 * 10**9,), b"b"),
        "3e9 elements by ndarray()": _Runs(np.ndarray, (3 * 10**9,), "b"),
        "3e9 objects in the state": claim((3 * 10**9,), "O"),
        "1e13 floats in the state": claim((10**6, 10**7)),
    }


class _WithState(_Runs):
    """Unpickling this calls ``func(*args)``, then ``__setstate__(state)`` on the result (BUILD)."""

    def __init__(self, made, state):
        super().__init__(made.func, *made.args)
        self.state = state

    def __reduce__(self):
        return self.func, self.args, self.state


@contextlib.contextmanager
def _address_space_cap(extra: int = 2**30):
    """Where Linux allows: at most ``extra`` more bytes of address space, so that a reader that does allocate what
    a file claims fails with MemoryError here instead of filling the machine's memory."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):
        yield
        return
    cap = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("case", list(_array_claims()))
@pytest.mark.parametrize("protocol", [2, 4])
def test_an_array_larger_than_the_file_is_refused_before_allocating(tmp_path, case, protocol):
    """A 116-byte file asking for 1e13 elements raised numpy's _ArrayMemoryError; one asking for 3e9 reached
    3.6 GB before being refused. An array's bytes are stored in the file: a claim beyond its size is refused."""
    import tracemalloc

    claim = _array_claims()[case]
    payload = _WithState(*claim) if isinstance(claim, tuple) else claim
    path = tmp_path / "w.pdparams"
    path.write_bytes(pickle.dumps({"fc.weight": payload}, protocol=protocol))
    assert path.stat().st_size < 300
    tracemalloc.start()
    try:
        with _address_space_cap(), pytest.raises(
                ValueError, match=r"refused to load: an array of shape .* more than the file's \d+ bytes can hold; "
                                  r"nothing was allocated") as err:
            read_pdparams(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and peak < 2**20, peak


def test_an_array_whose_data_does_not_fill_its_shape_is_refused(tmp_path):
    """numpy itself crashes (SIGSEGV) on an object array whose pickled list is shorter than its shape."""
    path = tmp_path / "w.pdparams"
    short = _WithState(_Runs(_RECONSTRUCT, np.ndarray, (0,), b"b"), (1, (10,), np.dtype("O"), False, [1.0]))
    path.write_bytes(pickle.dumps({"fc.weight": short}, protocol=4))
    with pytest.raises(ValueError, match=r"w.pdparams: refused to load: an array of Python objects"):
        read_pdparams(path)
    floats = _WithState(_Runs(_RECONSTRUCT, np.ndarray, (0,), b"b"), (1, (4,), np.dtype("f4"), False, b"\0" * 8))
    path.write_bytes(pickle.dumps({"fc.weight": floats}, protocol=4))
    with pytest.raises(ValueError, match=r"needs 16 bytes of data, its pickle gives 8"):
        read_pdparams(path)


def test_entries_that_are_not_arrays_are_ignored_with_a_warning(tmp_path):
    path = write_pdparams(tmp_path / "w.pdparams", {**small_values(), "epoch": np.int64(3).item()}, {})
    with pytest.warns(UserWarning, match=r"ignoring 1 entries that are not arrays: \['epoch'\]"):
        assert sorted(read_pdparams(path)) == sorted(SMALL["values"])


# -- model cards ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
def test_model_cards_say_where_the_weights_are_and_how_good_they_are(depth):
    cfg = create_model(f"rednet{depth}", num_classes=0, width=0.25).pretrained_cfg
    assert cfg["weights_url"].endswith(f"/RedNet{depth}_pretrained.pdparams")
    assert abs(cfg["paddleclas_top1"] - cfg["paper_top1"]) < 0.1 and 93 < cfg["paddleclas_top5"] < 95
    assert "weights_url" not in create_model(f"rednet{depth}_small", width=0.25).pretrained_cfg  # none published


def test_timm_loads_a_paddleclas_file(paddleclas_file):
    timm = require_or_skip("timm")
    model = timm.create_model("rednet26", pretrained=True, pretrained_cfg_overlay=dict(file=str(paddleclas_file)))
    with torch.no_grad():
        logits = model.eval()(parity_input())
    torch.testing.assert_close(logits, torch.tensor(PARITY["logits"]), rtol=0, atol=1e-5)
