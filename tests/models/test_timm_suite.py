"""timm's own model test suite on the RedNets that ``import involution`` registers.

timm's ``tests/test_models.py`` is the contract every timm model meets (forward, backward, default_cfgs with
``device=``/``dtype=`` on ``meta``, features, forward_intermediates, FX, TorchScript). It ships in timm's source
distribution only, so the README's test command downloads the sdist of the pinned version with pip into
``.cache/timm-sdist/`` (git-ignored); ``INVOLUTION_TIMM_SDIST`` names another file or folder. Nothing of timm is kept
in this repository.

The test extracts timm's ``tests/`` folder into a temporary folder, makes one edit to ``test_models.py`` (the
registering module joins ``FEAT_INTER_FILTERS``, timm's list of modules whose models have ``forward_intermediates``),
adds a ``conftest.py`` that imports involution before collection, and runs that file on ``-k rednet`` in a
subprocess, asserting from its JUnit report that each expected test ran and passed. Without the sdist it skips, and
fails under CI (tests/backend_requirements.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from backend_requirements import require_or_skip, skip_or_fail

timm = require_or_skip("timm")

import involution  # noqa: E402
from involution.models import timm_registry  # noqa: E402

SDIST_ENV = "INVOLUTION_TIMM_SDIST"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "timm-sdist"
DOWNLOAD = "pip download --no-deps --no-binary :all: -c constraints/ci.txt timm -d .cache/timm-sdist"
#: The tests of timm 1.0.31's test_models.py that take every RedNet (a registered classifier of a module in
#: FEAT_INTER_FILTERS), run outside GitHub Actions (which drops the FX + TorchScript one). Another timm version may
#: add or rename tests: update this list after reading its test_models.py.
EXPECTED_TESTS = (
    "test_model_forward",
    "test_model_backward",
    "test_model_default_cfgs",
    "test_model_forward_torchscript",
    "test_model_forward_features",
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
    "test_model_forward_fx",
    "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
)
#: The one edit of timm's file: the module that registers the RedNets joins the modules with forward_intermediates.
FILTERS_LINE = "FEAT_INTER_FILTERS = ["
SUITE_TIMEOUT_S = 1500


def find_sdist() -> Path:
    """The sdist of the installed timm version: ``$INVOLUTION_TIMM_SDIST`` (a file, or a folder holding it), else
    ``.cache/timm-sdist/``; skips (fails under CI) saying how to get it."""
    name = f"timm-{timm.__version__}.tar.gz"
    given = os.environ.get(SDIST_ENV)
    place = Path(given) if given else CACHE
    path = place if place.is_file() else place / name
    if not path.is_file():
        where = f"{SDIST_ENV}={given}" if given else str(CACHE)
        skip_or_fail(
            f"timm's source distribution {name} (its tests/test_models.py) is not at {where}: download it with "
            f"`{DOWNLOAD}` (the README's test command does), or point {SDIST_ENV} at it"
        )
    if path.name != name:
        pytest.fail(f"{path} is not the sdist of the installed timm {timm.__version__} ({name}): the suite must match")
    return path


def extract_tests(sdist: Path, dest: Path) -> Path:
    """timm's ``tests/`` folder of ``sdist`` into ``dest/tests`` (so whatever ``test_models.py`` imports from it is
    there; only that file is run); returns the path of ``test_models.py``."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts[1:]  # below timm-<version>/
            if member.isfile() and parts[:1] == ("tests",) and ".." not in parts:  # written here, never outside
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    suite = dest / "tests" / "test_models.py"
    if not suite.is_file():
        pytest.fail(f"{sdist} has no tests/test_models.py")
    return suite


def add_registering_module(test_file: Path) -> str:
    """The one edit: the RedNets' module (``timm_registry``) joins ``FEAT_INTER_FILTERS``; returns its name."""
    module = timm_registry.__name__.rsplit(".", 1)[-1]  # timm lists models by the last part of the module name
    text = test_file.read_text()
    if text.count(FILTERS_LINE) != 1:
        pytest.fail(f"timm's test_models.py no longer has one {FILTERS_LINE!r} line: this test needs updating")
    test_file.write_text(text.replace(FILTERS_LINE, f"{FILTERS_LINE}{module!r}, "))
    return module


def test_rednets_pass_timms_model_suite(tmp_path):
    suite = extract_tests(find_sdist(), tmp_path)
    add_registering_module(suite)
    (tmp_path / "conftest.py").write_text("import involution  # registers the RedNets with timm before collection\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keeps any ini file above the temporary folder out
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    env.pop("GITHUB_ACTIONS", None)  # the same tests wherever it runs (GitHub's runners drop some for big models)
    src = str(Path(involution.__file__).resolve().parents[1])  # this involution, whether installed or on a path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", str(suite), "-k", "rednet", "-q", "-p", "no:cacheprovider",
           "-W", "ignore::pytest.PytestUnknownMarkWarning", "-rfE", f"--junitxml={report}"]
    try:
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timm's suite on the RedNets ran past {SUITE_TIMEOUT_S} s")
    tail = (run.stdout + run.stderr)[-6000:]
    assert report.is_file(), f"timm's suite wrote no report (exit {run.returncode}):\n{tail}"

    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = bad[0] if bad else "passed"
    not_passed = {name: outcome for name, outcome in outcomes.items() if outcome != "passed"}
    assert not not_passed, f"{len(not_passed)} of {len(outcomes)} not passed: {sorted(not_passed.items())}\n{tail}"
    models = timm.list_models("rednet*")
    assert len(models) == 10
    ran = Counter(name.split("[")[0] for name in outcomes)
    assert ran == {test: len(models) for test in EXPECTED_TESTS}, (
        f"timm {timm.__version__}'s suite ran {dict(ran)} on the RedNets, not each of EXPECTED_TESTS once per model: "
        f"update EXPECTED_TESTS from that version's tests/test_models.py\n{tail}"
    )
    assert run.returncode == 0, tail
