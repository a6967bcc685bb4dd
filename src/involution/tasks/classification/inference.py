"""``eval`` and ``predict``: load a trained classifier with what it expects of its input, and use it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models.checkpoint_checks import apply_data_spec
from .._images import read_image
from ..engine.distributed import DistInfo
from ..engine.plots import plot_confusion_matrix
from ..engine.recorded import RecordedCheckpoint, read_recorded
from ..engine.run_dir import write_json
from ..engine.runtime import select_device
from .data import DataSpec, load_splits
from .task import EvalResult, evaluate
from .transforms import AugmentedDataset, build_image_transform, build_transforms


def load_classifier(
    checkpoint: str | os.PathLike | RecordedCheckpoint, model: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, DataSpec | None]:
    """A classifier in eval mode and the :class:`DataSpec` it was trained with (None if the file has none).

    ``checkpoint``: a run directory, its ``best.safetensors`` / ``last.pt``, or any file ``create_model(model,
    checkpoint=...)`` reads (official mmcls files, plain state dicts), for which ``model`` names the architecture;
    or what :func:`~involution.tasks.engine.recorded.read_recorded` found. A ``model`` or ``num_classes`` that
    contradicts what the file records is refused (ValueError).
    """
    found = checkpoint if isinstance(checkpoint, RecordedCheckpoint) else read_recorded(checkpoint, model, num_classes)
    if found.state is not None and found.data_spec is None:
        raise ValueError(f"{found.path}: a training checkpoint without a data_spec entry: not a classification run's")
    net = found.build()
    spec = _recorded_spec(net, found.data_spec, found.path) if found.data_spec is not None else None
    return net, spec


def _recorded_spec(net: nn.Module, raw: str | Mapping[str, Any], path: Path) -> DataSpec:
    """The checked data spec a checkpoint records, also given to ``net.pretrained_cfg``; its classes must be as
    many as the model's outputs (predict names each output by them)."""
    spec = DataSpec(**apply_data_spec(net, raw, path))
    outputs = getattr(net, "num_classes", None)
    if outputs and spec.num_classes != outputs:
        raise ValueError(f"{path}: data_spec.classes lists {spec.num_classes} classes but the model has {outputs} "
                         "outputs")
    return spec


def _model_card_spec(net: nn.Module, classes: list[str], fallback: DataSpec | None = None,
                     source: str | os.PathLike = "") -> DataSpec:
    """For checkpoints without a recorded spec: the model card's preprocessing (``pretrained_cfg``) with
    ``classes``; where the card is silent, ``fallback``'s values (without a fallback the card must give them)."""
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    if fallback is None:
        if "input_size" not in cfg:
            raise ValueError(f"{source} records no preprocessing and its model has no input_size in pretrained_cfg")
        size, mean, std, dataset = cfg["input_size"], cfg["mean"], cfg["std"], ""
    else:
        size = cfg.get("input_size", (3, fallback.image_size, fallback.image_size))
        mean, std, dataset = cfg.get("mean", fallback.mean), cfg.get("std", fallback.std), fallback.dataset
    resize = cfg.get("resize") if cfg.get("crop_pct", 1.0) < 1.0 else None
    return DataSpec(dataset, classes, int(size[0]), int(size[-1]), list(mean), list(std), resize)


@dataclass
class EvalReport:
    result: EvalResult
    spec: DataSpec
    json_path: Path | None
    confusion_path: Path | None
    data: str = ""  # the data set evaluated on (the run's own by default)


def run_eval(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    model: str | None = None,
    batch_size: int = 256,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    amp: str = "none",
    channels_last: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> EvalReport:
    """Top-1/top-5 of a checkpoint on the test split of ``data``; writes ``eval-<data>.json`` and a confusion
    matrix picture to ``out`` (default: the checkpoint's run directory, or beside the file).

    ``data`` / ``data_dir``: default the data set and folder the run recorded (``data_dir`` only when ``data`` is
    the recorded one); a checkpoint that records none (an official file) needs ``data``.
    """
    info = DistInfo()
    dev = select_device(device, info)
    found = read_recorded(checkpoint, model)
    data, data_dir = _eval_data(found, data, data_dir)
    net, spec = load_classifier(found)
    # the data's own split; image_size from the checkpoint so resizing matches training
    splits = load_splits(data, data_dir, spec.image_size if spec else 224, val_fraction=0.0)
    if spec is None:
        spec = _model_card_spec(net, splits.spec.classes, splits.spec)
    classes = splits.spec.classes
    num_outputs = getattr(net, "num_classes", len(classes))
    if num_outputs != len(classes):
        raise ValueError(f"the model has {num_outputs} outputs but --data {data} has {len(classes)} classes")
    eval_spec = DataSpec(data, classes, spec.in_chans, spec.image_size, spec.mean, spec.std, spec.eval_resize)
    _, eval_tf = build_transforms(eval_spec, augment=False)
    dataset = AugmentedDataset(splits.test, eval_tf)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    net = net.to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=f"eval {data}", leave=False)
    result = evaluate(net, loader, dev, info, len(classes), amp, channels_last, confusion=True, progress=bar)
    if bar is not None:
        bar.close()
    out_dir = Path(out) if out is not None else found.run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "checkpoint": str(found.path), "data": data, "count": result.count,
        "top1": result.acc, "top5": result.top5, "loss": result.loss,
        "confusion_matrix": result.confusion.tolist() if result.confusion is not None else None, "classes": classes,
    }
    json_path = write_json(out_dir / f"eval-{data}.json", summary)
    assert result.confusion is not None  # asked for (confusion=True)
    picture = plot_confusion_matrix(
        result.confusion, classes, out_dir / f"confusion-{data}.png",
        title=f"{getattr(net, 'model_name', '')} on {data}: top-1 {100 * result.acc:.2f}%",
    )
    return EvalReport(result, spec, json_path, picture, data)


def _eval_data(
    found: RecordedCheckpoint, data: str | None, data_dir: str | os.PathLike | None
) -> tuple[str, str | os.PathLike | None]:
    """``data`` and ``data_dir``, defaulting to what the run recorded (its folder only for its own data set)."""
    recorded, recorded_dir = found.data()
    if data is None:
        if recorded is None:
            raise ValueError(f"{found.path} records no data set: pass --data NAME (e.g. --data digits)")
        data = recorded
    if data_dir is None and data == recorded:
        data_dir = recorded_dir
    return data, data_dir


def load_classifier_and_spec(
    checkpoint: str | os.PathLike, model: str | None = None, classes: list[str] | None = None
) -> tuple[nn.Module, DataSpec]:
    """:func:`load_classifier`, with official checkpoints (no stored DataSpec) given their model card's."""
    net, spec = load_classifier(checkpoint, model)
    if spec is None:
        spec = _model_card_spec(net, classes or [str(i) for i in range(getattr(net, "num_classes", 1000))],
                                source=checkpoint)
    return net, spec


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    topk: int = 5,
    model: str | None = None,
    classes: list[str] | None = None,
) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-``topk`` (class, probability) per image file."""
    net, spec = load_classifier_and_spec(checkpoint, model, classes)
    results = []
    for item in images:
        probs = net(read_image(item, build_image_transform(spec)).unsqueeze(0)).float().softmax(dim=1)[0]
        k = min(topk, probs.numel())
        values, indices = probs.topk(k)
        results.append((str(item), [(spec.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]))
    return results
