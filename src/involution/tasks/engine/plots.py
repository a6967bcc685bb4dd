"""Pictures written by the tasks (matplotlib, headless): training curves and confusion matrices."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._atomic import atomic_path

# distinct colours for classes in drawn predictions (boxes, masks, label maps)
PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
           "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#000075")


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; keeps working on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    plt = pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    metric: str = "val_acc",
    metric_label: str = "top-1 accuracy (%)",
    scale: float = 100.0,
) -> Path:
    """Training loss and a validation metric against epoch: ``history`` rows with epoch, train_loss and
    ``metric`` (default ``val_acc``, drawn as a percentage; dense tasks pass e.g. ``val_bbox_AP``)."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", ms=3, label="train")
    if any("val_loss" in row for row in history):
        ax_loss.plot(epochs, [row.get("val_loss", np.nan) for row in history], marker="o", ms=3, label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [scale * row.get(metric, np.nan) for row in history], marker="o", ms=3, color="tab:green",
                label="val")
    if metric == "val_acc" and any("train_acc" in row for row in history):
        ax_acc.plot(epochs, [100 * row.get("train_acc", np.nan) for row in history], marker="o", ms=3,
                    color="tab:blue", label="train")
    ax_acc.set(xlabel="epoch", ylabel=metric_label, title=metric_label.split(" (")[0])
    ax_acc.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), with counts in the cells."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    n = len(classes)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return save_figure(fig, path)
