"""``involution train|eval|predict|visualize``: argument parsing over :mod:`involution.tasks.classification` and
:mod:`involution.tasks.classification.visualize`."""

from __future__ import annotations

import argparse

from ..tasks.engine.run_config import AMP_MODES, DEVICES
from .options import (
    OwnOption,
    add_train_parser,
    fraction_above_0,
    fraction_below_1,
    int_option,
    non_negative_int,
    positive_int,
    train_options,
)

_CHECKPOINT_HELP = "run directory, best.safetensors, last.pt or another checkpoint"
_MODEL_HELP = "architecture, for checkpoints that do not record it (official files); a run's is read from it"


def _cmd_train(args: argparse.Namespace) -> int:
    """Train a classifier; only the options given on the command line override the recipe (or the resumed run)."""
    from ..tasks.classification import TrainConfig, resume_config, train

    given, run = train_options(args)
    if "no_augment" in given:
        given["augment"] = not given.pop("no_augment")
    config = resume_config(run["out"], given) if run["resume"] and run["out"] is not None else TrainConfig.from_dict(given)
    return train(config, **run).exit_code


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..tasks.classification import run_eval

    report = run_eval(
        args.checkpoint, args.data, args.data_dir, model=args.model, batch_size=args.batch_size, out=args.out,
        device=args.device, amp=args.amp, channels_last=args.channels_last, workers=args.workers,
        progress=not args.no_progress,
    )
    r = report.result
    print(f"{report.data} test split, {r.count} images: top-1 {100 * r.acc:.2f}%  top-5 {100 * r.top5:.2f}%  "
          f"loss {r.loss:.4f}")
    print(f"wrote {report.json_path} and {report.confusion_path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..tasks.classification import predict

    for path, top in predict(args.checkpoint, args.images, topk=args.topk, model=args.model):
        print(path)
        for name, prob in top:
            print(f"  {prob:7.2%}  {name}")
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    """Per-group heat maps of the kernels an involution layer generates for an image, as in the paper's figure."""
    from ..tasks.classification.visualize import describe_layers, visualize

    if args.layer == "list":
        for info in describe_layers(args.checkpoint, model=args.model):
            print(info.describe())
        return 0
    if args.image is None:
        raise ValueError("visualize needs an IMAGE file (or --layer list)")
    fig = visualize(args.checkpoint, args.image, layer=args.layer, pixel=args.pixel, reduce=args.reduce,
                    out=args.out, model=args.model)
    print(f"{fig.layer.describe()}: kernels at pixel (y={fig.pixel[0]}, x={fig.pixel[1]}) "
          f"= cell {fig.grid_pixel} of the layer's output")
    print(f"wrote {fig.path}")
    return 0


def _train_groups(datasets: tuple[str, ...], recipes: list[str]) -> dict[str, dict[str, OwnOption]]:
    """The options of ``involution train``, by group: help texts and the options only classification has."""
    return {
        "data": {
            "--data": {"choices": datasets, "help": "data set (default digits)"},
            "--data-dir": "folder of the data set files (fashion-mnist, cifar10, imagefolder)",
            "--image-size": "train/test image size (default: the recipe's)",
            "--val-fraction": {"type": fraction_below_1, "help": "share of the training split held out for validation"},
            "--train-fraction": {"type": fraction_above_0,
                                 "help": "train on this share of the training split (stratified, fixed per --seed)"},
            "--no-augment": {"action": "store_true", "help": "no random crops/flips"},
            "--workers": "data-loader worker processes (default 0)",
        },
        "model": {
            "--model": "registry name (see `involution models`), e.g. rednet26_small, resnet26_small",
            "--model-kwargs": "model arguments, e.g. width=0.25",
            "--checkpoint": "initial weights (fine-tuning): any file create_model(checkpoint=) reads",
        },
        "optimisation": {
            "--recipe": {"choices": recipes, "help": "defaults to take (default: the data set's)"},
            "--epochs": None,
            "--batch-size": "global batch (split across torchrun processes)",
            "--lr": "peak learning rate (default: base lr scaled by batch size)",
            "--optimizer": {"choices": ("sgd", "adamw")},
            **dict.fromkeys(("--momentum", "--weight-decay", "--warmup-epochs", "--schedule")),
            "--label-smoothing": {"type": fraction_below_1},
            "--clip-grad": {"metavar": "NORM", "help": "clip the gradient norm to NORM"},
            "--seed": None,
        },
        "speed": {
            "--amp": "autocast precision (bf16 on the CPU)",
            "--channels-last": {"action": argparse.BooleanOptionalAction,
                                "help": "channels_last memory format (the recipe decides by default)"},
            "--compile": {"action": "store_true", "help": "torch.compile the model"},
            "--compile-backend": "torch.compile backend (default inductor)",
            "--sync-bn": {"action": "store_true", "help": "SyncBatchNorm under torchrun (GPUs)"},
            "--device": None,
            "--threads": "CPU threads per process",
        },
        "run": {
            **dict.fromkeys(("--out", "--resume", "--overwrite", "--eval-every")),
            "--log-every": "TensorBoard step-loss interval",
            "--no-progress": "no progress bars",
        },
    }


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``train``, ``eval``, ``predict`` and ``visualize``."""
    from ..tasks.classification import DATASETS, RECIPES

    add_train_parser(
        sub, "train", _train_groups(DATASETS, sorted(RECIPES)), _cmd_train,
        help="train a classifier (default: a small RedNet on scikit-learn's digits, a few minutes on 2 CPU cores)",
        description="Train an image classifier. With no options: a small RedNet on scikit-learn's digits. "
        "Options not given come from the data set's recipe (see --recipe); under torchrun the same command runs "
        "DistributedDataParallel.",
    )

    e = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on a data set's test split, with a confusion matrix")
    e.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    e.add_argument("--data", choices=DATASETS, help="data set (default: the run's own)")
    e.add_argument("--data-dir", help="its folder (default: the run's, when --data is the run's data set)")
    e.add_argument("--model", help=_MODEL_HELP)
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--out", help="where to write eval-DATA.json and confusion-DATA.png (default: the run directory)")
    e.add_argument("--device", choices=DEVICES, default="auto")
    e.add_argument("--amp", choices=AMP_MODES, default="none")
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--workers", type=non_negative_int, default=0)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("predict", help="top-k classes of image files")
    r.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    r.add_argument("images", nargs="+", metavar="IMAGE")
    r.add_argument("--topk", type=positive_int, default=5)
    r.add_argument("--model", help=_MODEL_HELP)
    r.set_defaults(func=_cmd_predict)

    v = sub.add_parser("visualize", help="draw the kernels an involution layer generates for an image (paper figure)")
    v.add_argument("--checkpoint", required=True, help=_CHECKPOINT_HELP)
    v.add_argument("image", nargs="?", metavar="IMAGE", help="image file (not needed with --layer list)")
    v.add_argument("--layer", help="involution layer name, or 'list' to print them "
                   "(default: the last involution of the first stage)")
    v.add_argument("--pixel", type=int_option(), nargs=2, metavar=("Y", "X"),
                   help="where to show the K x K kernels, in the preprocessed input (default: its centre; the "
                   "range, which depends on the model's input size, is checked once the checkpoint is read)")
    v.add_argument("--reduce", choices=("sum", "norm"), default="sum",
                   help="per-pixel reduction of each kernel for the heat maps (default sum, as in the paper)")
    v.add_argument("--out", help="PNG to write (default: kernels-IMAGE-LAYER.png in the run directory)")
    v.add_argument("--model", help=_MODEL_HELP)
    v.set_defaults(func=_cmd_visualize)
