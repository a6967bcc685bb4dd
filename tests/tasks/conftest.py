"""Fixtures of the task tests: tiny training configs on scikit-learn's digits, and one trained run to share."""

from __future__ import annotations

from pathlib import Path

import pytest

from involution.tasks.classification import TrainConfig, train

FASHION_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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
