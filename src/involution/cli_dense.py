"""``involution detect train|eval|predict`` and ``involution segment train|eval|predict``: argument parsing over
:mod:`involution.tasks.dense`, :mod:`involution.tasks.detection` and :mod:`involution.tasks.segmentation`."""

from __future__ import annotations

import argparse
from typing import Any

_TASK_HELP = {
    "detect": ("object detection / instance segmentation (Faster R-CNN, Mask R-CNN, RetinaNet on RedNet-50)",
               "fasterrcnn_rednet50_fpn, maskrcnn_rednet50_fpn, retinanet_rednet50_fpn"),
    "segment": ("semantic segmentation (Semantic FPN, UPerNet on RedNet-50)", "fpn_rednet50, upernet_rednet50"),
}


def _task(name: str) -> Any:
    if name == "detect":
        from .tasks.detection import DetectionTask

        return DetectionTask()
    from .tasks.segmentation import SegmentationTask

    return SegmentationTask()


def _cmd_dense_train(args: argparse.Namespace) -> int:
    from .cli import train_options
    from .tasks.dense import DenseConfig, resume_dense_config, train_dense

    given, out, resume, progress = train_options(args)
    given["task"] = args.command
    config = resume_dense_config(out, given) if resume and out is not None else DenseConfig.from_dict(given)
    result = train_dense(_task(args.command), config, out=out, resume=resume, progress=progress)
    return 130 if result.status == "interrupted" else 0


def _cmd_dense_eval(args: argparse.Namespace) -> int:
    from .tasks.dense.inference import evaluate_checkpoint

    overrides = {k: v for k, v in (("data", args.data), ("data_dir", args.data_dir)) if v is not None}
    report = evaluate_checkpoint(_task(args.command), args.checkpoint, overrides, out_dir=args.out,
                                 batch_size=args.batch_size, device=args.device, pictures=args.pictures,
                                 progress=not args.no_progress)
    shown = "  ".join(f"{k} {100 * v:.2f}" for k, v in report["metrics"].items())
    print(f"{report['data_source']} val, {report['images']} images: {shown} (percent)")
    print(f"wrote {report['json']} and {len(report['pictures'])} pictures")
    return 0


def _cmd_dense_predict(args: argparse.Namespace) -> int:
    from .tasks.dense.inference import predict_files

    for path, output in predict_files(_task(args.command), args.checkpoint, args.images, out_dir=args.out,
                                      threshold=args.threshold, device=args.device):
        found = int((output["scores"] >= args.threshold).sum()) if args.command == "detect" else None
        print(f"wrote {path}" + (f" ({found} detections >= {args.threshold})" if found is not None else ""))
    return 0


def add_dense_parsers(sub: argparse._SubParsersAction) -> None:
    from .cli import (
        fraction_below_1,
        fraction_in_0_1,
        non_negative_float,
        non_negative_int,
        positive_float,
        positive_int,
        seed_int,
    )
    from .tasks.dense import DATASETS

    for task, (what, models) in _TASK_HELP.items():
        top = sub.add_parser(task, help=what)
        actions = top.add_subparsers(dest="action", required=True)

        p = actions.add_parser(
            "train", argument_default=argparse.SUPPRESS, help=f"train a model ({models})",
            description=f"Train {what}. With no options: a laptop-sized model on generated scenes (digits, or "
            "Fashion-MNIST with --data-dir); options not given come from the recipe of the task and data set. "
            "Under torchrun the same command runs DistributedDataParallel.",
        )
        g = p.add_argument_group("data")
        g.add_argument("--data", choices=DATASETS[task], help="data set (default scenes)")
        g.add_argument("--data-dir", help="the data set root; with --data scenes the folder holding FashionMNIST/raw")
        g.add_argument("--scenes-dir", help="where generated scenes go (default runs/scenes/<settings>)")
        g.add_argument("--scene-source", choices=("fashion-mnist", "digits"))
        g.add_argument("--num-train", type=positive_int, help="generated training scenes")
        g.add_argument("--num-val", type=positive_int, help="generated validation scenes")
        g.add_argument("--image-size", type=positive_int, help="scene size (detection: also the resize target)")
        if task == "segment":
            g.add_argument("--crop-size", type=positive_int, help="random square training crop")
        g.add_argument("--workers", type=non_negative_int)
        g = p.add_argument_group("model")
        g.add_argument("--model", help=models)
        g.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE",
                       help="e.g. neck='involution' head='involution' backbone_kwargs={'width':0.5}")
        g.add_argument("--checkpoint", help="whole-model weights to start from (ours, or official mmdet/mmseg)")
        g.add_argument("--backbone-checkpoint", help="ImageNet RedNet-50 weights (official mmcls .pth or ours)")
        g = p.add_argument_group("optimisation")
        for flag, kind in (("--epochs", positive_int), ("--batch-size", positive_int), ("--lr", positive_float),
                           ("--momentum", fraction_below_1), ("--weight-decay", non_negative_float),
                           ("--warmup-epochs", non_negative_float), ("--clip-grad", positive_float),
                           ("--seed", seed_int)):
            g.add_argument(flag, type=kind)
        g.add_argument("--schedule", choices=("cosine", "constant"))
        if task == "segment":
            g.add_argument("--aux-weight", type=non_negative_float, help="auxiliary-head loss weight (official 0.4)")
        g.add_argument("--amp", choices=("none", "bf16", "fp16"))
        g.add_argument("--device", choices=("auto", "cpu", "cuda"))
        g.add_argument("--threads", type=positive_int)
        g = p.add_argument_group("run")
        g.add_argument("--out", help="run directory (default: a new folder under runs/)")
        g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        g.add_argument("--eval-every", type=positive_int, metavar="EPOCHS")
        g.add_argument("--log-every", type=positive_int, metavar="STEPS")
        g.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=_cmd_dense_train)

        e = actions.add_parser("eval", help="validation metrics of a checkpoint, with drawn predictions")
        e.add_argument("--checkpoint", required=True, help="run directory or its best/last.safetensors")
        e.add_argument("--data", choices=DATASETS[task], help="default: the run's own")
        e.add_argument("--data-dir")
        e.add_argument("--batch-size", type=positive_int, default=4)
        e.add_argument("--pictures", type=non_negative_int, default=8, help="validation images to draw (predictions/)")
        e.add_argument("--out", help="where eval-DATA.json and predictions/ go (default: the run directory)")
        e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        e.add_argument("--no-progress", action="store_true")
        e.set_defaults(func=_cmd_dense_eval)

        r = actions.add_parser("predict", help="draw the predictions on image files")
        r.add_argument("--checkpoint", required=True, help="run directory or its best/last.safetensors")
        r.add_argument("images", nargs="+", metavar="IMAGE")
        r.add_argument("--threshold", type=fraction_in_0_1, default=0.5,
                       help="detections scoring below it are not drawn")
        r.add_argument("--out", help="folder for the pictures (default RUN/predictions)")
        r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        r.set_defaults(func=_cmd_dense_predict)
