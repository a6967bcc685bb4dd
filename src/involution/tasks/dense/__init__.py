"""What detection and segmentation share: the run configuration, the task interface and the training loop."""

from .config import DATASETS, RECIPES, TASKS, DenseConfig, resolve
from .task import DenseTask, KeyedDataset, resume_dense_config

__all__ = [
    "DATASETS",
    "RECIPES",
    "TASKS",
    "DenseConfig",
    "DenseTask",
    "KeyedDataset",
    "resolve",
    "resume_dense_config",
]
