"""Image classification: train (one command, resumable, torchrun-ready), evaluate and predict.

>>> from involution.tasks.classification import TrainConfig, train
>>> result = train(TrainConfig(data="digits", epochs=3), out="runs/digits")   # RedNet on sklearn's digits
>>> result.metrics["test_acc"]
"""

from ..engine.loop import TrainResult
from ..engine.runtime import NonFiniteLossError
from .config import DATASETS, RECIPES, TrainConfig, resolve
from .data import DataSpec, load_splits
from .inference import EvalReport, load_classifier, predict, run_eval
from .task import ClassificationTask, resume_config, train

__all__ = [
    "DATASETS",
    "RECIPES",
    "ClassificationTask",
    "DataSpec",
    "EvalReport",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "load_classifier",
    "load_splits",
    "predict",
    "resolve",
    "resume_config",
    "run_eval",
    "train",
]
