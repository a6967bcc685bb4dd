"""What detection and segmentation share: the run configuration, the task interface and the training loop."""

from .config import DATASETS, RECIPES, TASKS, DenseConfig, resolve
from .task import DenseData, DenseResult, DenseTask, KeyedDataset, resume_dense_config, train_dense

__all__ = [
    "DATASETS",
    "RECIPES",
    "TASKS",
    "DenseConfig",
    "DenseData",
    "DenseResult",
    "DenseTask",
    "KeyedDataset",
    "resolve",
    "resume_dense_config",
    "train_dense",
]
