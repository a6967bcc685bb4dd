"""``involution detect train|eval|predict`` and ``involution segment train|eval|predict``: argument parsing over
:mod:`involution.tasks.dense`, :mod:`involution.tasks.detection` and :mod:`involution.tasks.segmentation`."""

from __future__ import annotations

import argparse
from typing import Any

from ..tasks.engine.run_config import DEVICES
from .options import (
    OwnOption,
    add_train_parser,
    fraction_in_0_1,
    non_negative_float,
    non_negative_int,
    positive_int,
    train_options,
)

_TASK_HELP = {
    "detect": ("object detection / instance segmentation (Faster R-CNN, Mask R-CNN, RetinaNet on RedNet-50)",
               "fasterrcnn_rednet50_fpn, maskrcnn_rednet50_fpn, retinanet_rednet50_fpn"),
    "segment": ("semantic segmentation (Semantic FPN, UPerNet on RedNet-50)", "fpn_rednet50, upernet_rednet50"),
}


def _task(name: str) -> Any:
    from ..tasks.detection import DetectionTask
    from ..tasks.segmentation import SegmentationTask

    return DetectionTask() if name == "detect" else SegmentationTask()


def _cmd_dense_train(args: argparse.Namespace) -> int:
    from ..tasks.dense import DenseConfig, resume_dense_config
    from ..tasks.engine.loop import train

    given, run = train_options(args)
    given["task"] = args.command
    config = resume_dense_config(run["out"], given) if run["resume"] and run["out"] is not None else DenseConfig.from_dict(given)
    return train(_task(args.command), config, **run).exit_code


def _cmd_dense_eval(args: argparse.Namespace) -> int:
    from ..tasks.dense.inference import evaluate_checkpoint

    overrides = {k: v for k, v in (("data", args.data), ("data_dir", args.data_dir)) if v is not None}
    report = evaluate_checkpoint(_task(args.command), args.checkpoint, overrides, out_dir=args.out,
                                 batch_size=args.batch_size, device=args.device, pictures=args.pictures,
                                 progress=not args.no_progress)
    shown = "  ".join(f"{k} {100 * v:.2f}" for k, v in report["metrics"].items())
    print(f"{report['data_source']} val, {report['images']} images: {shown} (percent)")
    print(f"wrote {report['json']} and {len(report['pictures'])} pictures")
    return 0


def _cmd_dense_predict(args: argparse.Namespace) -> int:
    from ..tasks.dense.inference import predict_files

    for path, output in predict_files(_task(args.command), args.checkpoint, args.images, out_dir=args.out,
                                      threshold=args.threshold, device=args.device):
        found = int((output["scores"] >= args.threshold).sum()) if args.command == "detect" else None
        print(f"wrote {path}" + (f" ({found} detections >= {args.threshold})" if found is not None else ""))
    return 0


def _train_groups(task: str, models: str, datasets: tuple[str, ...]) -> dict[str, dict[str, OwnOption]]:
    """The options of ``TASK train``, by group: help texts and the options only dense tasks (or ``task``) have."""
    segment = task == "segment"
    return {
        "data": {
            "--data": {"choices": datasets, "help": "data set (default scenes)"},
            "--data-dir": "the data set root; with --data scenes the folder holding FashionMNIST/raw",
            "--scenes-dir": "where generated scenes go (default runs/scenes/<settings>)",
            "--scene-source": {"choices": ("fashion-mnist", "digits")},
            "--num-train": {"type": positive_int, "help": "generated training scenes"},
            "--num-val": {"type": positive_int, "help": "generated validation scenes"},
            "--image-size": "scene size (detection: also the resize target)",
            **({"--crop-size": {"type": positive_int, "help": "random square training crop"}} if segment else {}),
            "--workers": None,
        },
        "model": {
            "--model": models,
            "--model-kwargs": "e.g. neck='involution' head='involution' backbone_kwargs={'width':0.5}",
            "--checkpoint": "whole-model weights to start from (ours, or official mmdet/mmseg)",
            "--backbone-checkpoint": "ImageNet RedNet-50 weights (official mmcls .pth or ours)",
        },
        "optimisation": {
            **dict.fromkeys(("--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--warmup-epochs",
                             "--clip-grad", "--seed", "--schedule")),
            **({"--aux-weight": {"type": non_negative_float, "help": "auxiliary-head loss weight (official 0.4)"}}
               if segment else {}),
            **dict.fromkeys(("--amp", "--device", "--threads")),
        },
        "run": dict.fromkeys(("--out", "--resume", "--overwrite", "--eval-every", "--log-every", "--no-progress")),
    }


def _add_inference_parsers(actions: argparse._SubParsersAction, datasets: tuple[str, ...]) -> None:
    """``TASK eval`` and ``TASK predict``."""
    e = actions.add_parser("eval", help="validation metrics of a checkpoint, with drawn predictions")
    e.add_argument("--checkpoint", required=True, help="run directory or its best/last.safetensors")
    e.add_argument("--data", choices=datasets, help="default: the run's own")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=positive_int, default=4)
    e.add_argument("--pictures", type=non_negative_int, default=8, help="validation images to draw (predictions/)")
    e.add_argument("--out", help="where eval-DATA.json and predictions/ go (default: the run directory)")
    e.add_argument("--device", choices=DEVICES, default="auto")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_dense_eval)

    r = actions.add_parser("predict", help="draw the predictions on image files")
    r.add_argument("--checkpoint", required=True, help="run directory or its best/last.safetensors")
    r.add_argument("images", nargs="+", metavar="IMAGE")
    r.add_argument("--threshold", type=fraction_in_0_1, default=0.5, help="detections scoring below it are not drawn")
    r.add_argument("--out", help="folder for the pictures (default RUN/predictions)")
    r.add_argument("--device", choices=DEVICES, default="auto")
    r.set_defaults(func=_cmd_dense_predict)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``detect train|eval|predict`` and ``segment train|eval|predict``."""
    from ..tasks.dense import DATASETS

    for task, (what, models) in _TASK_HELP.items():
        actions = sub.add_parser(task, help=what).add_subparsers(dest="action", required=True)
        add_train_parser(
            actions, "train", _train_groups(task, models, DATASETS[task]), _cmd_dense_train,
            help=f"train a model ({models})",
            description=f"Train {what}. With no options: a laptop-sized model on generated scenes (digits, or "
            "Fashion-MNIST with --data-dir); options not given come from the recipe of the task and data set. "
            "Under torchrun the same command runs DistributedDataParallel.",
        )
        _add_inference_parsers(actions, DATASETS[task])
