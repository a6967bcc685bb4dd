"""Fixtures of the task tests: tiny training configs on scikit-learn's digits, one trained run to share, a stop
flag that interrupts a training loop at a chosen step, and helpers to run the command line as a child process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from involution.tasks.classification import TrainConfig, train
from involution.tasks.engine.runtime import StopFlag

FASHION_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class StopAfter(StopFlag):
    """Asks the loop to stop at its ``n``-th check (one check per training step)."""

    def __init__(self, n: int) -> None:
        super().__init__(announce=False)
        self.n = n
        self.checks = 0

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks >= self.n

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def tiny(**overrides) -> TrainConfig:
    """A run of a few seconds: the narrowest small RedNet, digits, no progress bars."""
    values = dict(data="digits", epochs=1, model_kwargs={"width": 0.125}, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One finished 3-epoch digits run (run directory), shared by the eval/predict tests."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    train(tiny(epochs=3), out=out, progress=False)
    return out


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``python -m involution``: unbuffered output, no INVOLUTION_DEBUG tracebacks."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("INVOLUTION_DEBUG", None)
    return env


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Wait until ``path`` exists (a sign of how far a child run got); fails if ``proc`` ends first, with its
    output, or after ``seconds``."""
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        assert time.time() < deadline, f"{path} did not appear in time"
        time.sleep(0.1)
