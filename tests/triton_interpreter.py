"""Running the Triton backend's tests without a GPU: in a child process with Triton's interpreter on.

Triton reads ``TRITON_INTERPRET`` when it is first imported (and ``torch.compile`` imports it), so setting the
variable inside a test process that may have imported Triton already does not work. A test file of the Triton
kernels marks its kernel tests :data:`in_process` and has one test, skipped when they run in-process, that calls
:func:`run_in_interpreter` on the file itself: the child runs the marked tests on CPU tensors. With a GPU (or
``TRITON_INTERPRET=1`` set by hand) they run in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend_requirements import skip_or_fail
from involution.ops.backends.triton_impl import _interpret_requested

ON_GPU = torch.cuda.is_available()
#: Whether the kernel tests run in this process (else a child process runs them).
IN_PROCESS = ON_GPU or _interpret_requested()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

in_process = pytest.mark.skipif(
    not IN_PROCESS, reason="run by the interpreter test in a child process (TRITON_INTERPRET=1)"
)
not_in_process = pytest.mark.skipif(IN_PROCESS, reason="the kernel tests run in this process")


def run_in_interpreter(test_file: str) -> None:
    """Run the tests of ``test_file`` in a fresh pytest process with ``TRITON_INTERPRET=1``; fail with its report if
    any fails, skip (fail under CI) if it skipped them all."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(test_file).resolve())]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    report = f"{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"the interpreter run failed:\n{report}"
    if " passed" not in proc.stdout:  # e.g. a Triton that fails on import: the child skipped the whole module
        skip_or_fail(f"the interpreter run skipped every test:\n{report[-2000:]}")
