"""``eval`` and ``predict``: load a trained classifier with what it expects of its input, and use it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...models import create_model, load_model, read_checkpoint
from ...models.checkpoint import FORMAT as WEIGHTS_FORMAT
from ...models.checkpoint_checks import apply_data_spec, check_finite
from .._images import read_image
from ..engine.distributed import DistInfo
from ..engine.plots import plot_confusion_matrix
from ..engine.run_dir import resolve_checkpoint, run_dir_of, write_json
from ..engine.runtime import select_device
from ..engine.state import FORMAT as TRAIN_FORMAT
from ..engine.state import load_training_state
from .data import DataSpec, load_splits
from .task import EvalResult, evaluate
from .transforms import AugmentedDataset, build_image_transform, build_transforms


def load_classifier(
    checkpoint: str | os.PathLike, model: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, DataSpec | None]:
    """A classifier in eval mode and the :class:`DataSpec` it was trained with (None if the file has none).

    ``checkpoint``: a run directory, its ``best.safetensors`` / ``last.pt``, or any file ``create_model(model,
    checkpoint=...)`` reads (official mmcls files, plain state dicts), for which ``model`` names the architecture.
    """
    path = resolve_checkpoint(checkpoint)
    if path.suffix == ".pt":
        state = _maybe_training_state(path)
        if state is not None:
            if "data_spec" not in state:
                raise ValueError(f"{path}: a training checkpoint without a data_spec entry: not a classification run's")
            net = create_model(state["model_name"], **state["model_kwargs"])
            check_finite(state["model"], path)
            net.load_state_dict(state["model"])
            return net.eval(), _recorded_spec(net, state["data_spec"], path)
    _, metadata = read_checkpoint(path)
    if metadata.get("format") == WEIGHTS_FORMAT:
        net = load_model(path)
        spec = _recorded_spec(net, metadata["data_spec"], path) if "data_spec" in metadata else None
        return net.eval(), spec
    if model is None:
        raise ValueError(f"{path} does not record its architecture: pass --model NAME (e.g. rednet50)")
    net = create_model(model, checkpoint=path, **({} if num_classes is None else {"num_classes": num_classes}))
    return net.eval(), None


def _recorded_spec(net: nn.Module, raw: str, path: Path) -> DataSpec:
    """The checked data spec a checkpoint records, also given to ``net.pretrained_cfg``; its classes must be as
    many as the model's outputs (predict names each output by them)."""
    spec = DataSpec(**apply_data_spec(net, raw, path))
    outputs = getattr(net, "num_classes", None)
    if outputs and spec.num_classes != outputs:
        raise ValueError(f"{path}: data_spec.classes lists {spec.num_classes} classes but the model has {outputs} "
                         "outputs")
    return spec


def _maybe_training_state(path: Path) -> dict[str, Any] | None:
    try:
        return load_training_state(path)
    except ValueError as err:
        if TRAIN_FORMAT in str(err):
            return None  # another kind of .pt file (official checkpoint, plain state dict)
        raise


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


def run_eval(
    checkpoint: str | os.PathLike,
    data: str,
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
    matrix picture to ``out`` (default: the checkpoint's run directory, or beside the file)."""
    info = DistInfo()
    dev = select_device(device, info)
    net, spec = load_classifier(checkpoint, model)
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
    out_dir = Path(out) if out is not None else run_dir_of(Path(checkpoint))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "checkpoint": str(checkpoint), "data": data, "count": result.count,
        "top1": result.acc, "top5": result.top5, "loss": result.loss,
        "confusion_matrix": result.confusion.tolist() if result.confusion is not None else None, "classes": classes,
    }
    json_path = write_json(out_dir / f"eval-{data}.json", summary)
    picture = plot_confusion_matrix(
        result.confusion, classes, out_dir / f"confusion-{data}.png",
        title=f"{getattr(net, 'model_name', '')} on {data}: top-1 {100 * result.acc:.2f}%",
    )
    return EvalReport(result, spec, json_path, picture)


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
