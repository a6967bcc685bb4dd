"""Evaluate a trained detector / segmenter and draw its predictions on image files.

A checkpoint is a run directory (its ``checkpoints/best.safetensors``, else ``last.safetensors``) or one of this
library's safetensors files written by :func:`~involution.tasks.engine.loop.train`: they record the model, its
classes and the training configuration, so evaluation finds the run's own validation data by default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._images import read_image
from ..engine.capabilities import predictor
from ..engine.context import EvalContext, dataset_size
from ..engine.distributed import DistInfo
from ..engine.recorded import read_recorded
from ..engine.run_dir import run_dir_of, write_json
from ..engine.runtime import select_device
from .config import DenseConfig, resolve
from .task import DenseTask


@dataclass
class DenseCheckpoint:
    model: nn.Module
    classes: list[str]
    task: str
    config: DenseConfig | None  # the training configuration, when the file records it
    path: Path


def load_dense_checkpoint(path: str | os.PathLike, task: DenseTask | None = None) -> DenseCheckpoint:
    """Rebuild the model of a dense checkpoint; refuses a file of another task (e.g. a classifier)."""
    found = read_recorded(path, names=("best.safetensors", "last.safetensors"))  # last.pt records no task
    file, kind = found.path, found.metadata.get("task")
    if kind is None:
        raise ValueError(f"{file}: not a detection/segmentation checkpoint of this library (no task recorded); "
                         "train one with `involution detect train` or `involution segment train`")
    if task is not None and kind != task.name:
        raise ValueError(f"{file} is a {kind!r} checkpoint; use `involution {kind} ...` for it")
    classes = json.loads(found.metadata.get("classes", "[]"))
    config = DenseConfig.from_dict(found.train_config) if found.train_config is not None else None
    model = found.build()
    return DenseCheckpoint(model, classes, kind, config, file)


def evaluate_checkpoint(
    task: DenseTask,
    checkpoint: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 4,
    device: str = "auto",
    pictures: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Validation metrics of a checkpoint on its run's validation set (or the data ``overrides`` name, e.g.
    ``{"data": "coco", "data_dir": ...}``); writes ``eval-<data>.json`` and ``pictures`` drawn predictions
    (``predictions/``) to ``out_dir`` (default: the run directory)."""
    ckpt = load_dense_checkpoint(checkpoint, task)
    if ckpt.config is None and not overrides:
        raise ValueError(f"{ckpt.path} records no training data; pass --data and --data-dir")
    base = (ckpt.config or DenseConfig(task=task.name)).to_dict()
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = resolve(DenseConfig.from_dict(base))
    data = task.load_data(config, print if progress else (lambda _m: None))
    if data.classes != ckpt.classes:
        raise ValueError(f"{ckpt.path} was trained on classes {ckpt.classes[:5]}..., the data has "
                         f"{data.classes[:5]}...; evaluate on data with the same classes")
    dev = select_device(device, DistInfo())
    model = ckpt.model.to(dev)
    drawer = predictor(task) if pictures > 0 else None  # before the evaluation: a task that cannot draw says so
    loader = DataLoader(data.val, batch_size=batch_size, collate_fn=task.collate)
    metrics = task.evaluate(model, loader, EvalContext(dev, DistInfo(), data, progress=progress))
    out = Path(out_dir) if out_dir else run_dir_of(ckpt.path)
    drawn = []
    for index in range(min(pictures, dataset_size(data.val))):
        assert drawer is not None  # pictures > 0
        image, _ = data.val[index]
        picture = drawer.draw(image, drawer.predict(model, image), ckpt.classes)
        drawn.append(str(save_picture(picture, out / "predictions" / f"val-{index:04d}.png")))
    report = {"checkpoint": str(ckpt.path), "task": task.name, "data": config.data, "data_source": data.source,
              "images": dataset_size(data.val), "metrics": metrics, "pictures": drawn}
    report["json"] = str(write_json(out / f"eval-{config.data}.json", report))
    return report


def predict_files(
    task: DenseTask,
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    threshold: float = 0.5,
    device: str = "auto",
) -> list[tuple[Path, dict[str, Tensor]]]:
    """Draw the predictions on each image file into ``out_dir`` (default ``RUN/predictions``); returns the
    written pictures with the raw outputs."""
    drawer = predictor(task)
    ckpt = load_dense_checkpoint(checkpoint, task)
    model = ckpt.model.to(select_device(device, DistInfo()))
    out = Path(out_dir) if out_dir else run_dir_of(ckpt.path) / "predictions"
    results = []
    for item in images:
        image = read_image(item)
        output = drawer.predict(model, image)
        picture = drawer.draw(image, output, ckpt.classes, threshold)
        results.append((save_picture(picture, out / f"{Path(item).stem}.png"), output))
    return results


def save_picture(picture: Tensor, path: Path) -> Path:
    """A uint8 ``(3, H, W)`` picture to a PNG file (atomically)."""
    from PIL import Image

    from ..._atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(picture.permute(1, 2, 0).contiguous().numpy()).save(tmp, format="PNG")
    return path
