"""``involution train-video``: argument parsing over :mod:`involution.tasks.video`."""

from __future__ import annotations

import argparse

from .options import (
    OwnOption,
    add_train_parser,
    fraction_below_1,
    non_negative_int,
    positive_float,
    positive_int,
    train_options,
)


def _cmd_train_video(args: argparse.Namespace) -> int:
    """Train a clip classifier; only the options given override the recipe (or the resumed run)."""
    from ..tasks.video import VideoConfig, resume_config, train

    given, run = train_options(args)
    config = resume_config(run["out"], given) if run["resume"] and run["out"] is not None else VideoConfig.from_dict(given)
    return train(config, **run).exit_code


def _groups() -> dict[str, dict[str, OwnOption]]:
    return {
        "clips": {
            "--data": {"choices": ("digits", "fashion-mnist"), "help": "the images that move (default digits)"},
            "--data-dir": "folder of the Fashion-MNIST files (DIR/FashionMNIST/raw)",
            "--image-size": "canvas side in pixels (default 32)",
            "--frames": {"type": positive_int, "help": "frames per clip (default 8)"},
            "--item-size": {"type": positive_int, "help": "side of the moving item (default 16)"},
            "--directions": {"type": positive_int, "help": "directions of motion, the classes (default 8)"},
            "--min-speed": {"type": positive_float, "help": "pixels per frame (default 0.5)"},
            "--max-speed": {"type": positive_float, "help": "pixels per frame (default 1.5)"},
            "--jitter": {"type": non_negative_int, "help": "random shift per frame and axis, pixels (default 2)"},
            **{f"--{split}-clips": {"type": positive_int, "help": f"{split} clips{help_}"}
               for split, help_ in (("train", " per epoch (default 4000)"), ("val", " (default 1000)"),
                                    ("test", " (default 2000)"))},
            "--still": {"action": "store_true",
                        "help": "the control: every frame is the clip's first, so only the start position is seen"},
            "--workers": "data-loader worker processes (default 0)",
        },
        "model": {
            "--model": "video_rednet_tiny (default, Involution3d) or video_resnet_tiny (its Conv3d twin)",
            "--model-kwargs": "model arguments, e.g. widths=(32,64,128)",
            "--checkpoint": "initial weights",
        },
        "optimisation": {
            **dict.fromkeys(("--epochs", "--batch-size", "--lr")),
            "--optimizer": {"choices": ("sgd", "adamw")},
            **dict.fromkeys(("--momentum", "--weight-decay", "--warmup-epochs", "--schedule")),
            "--label-smoothing": {"type": fraction_below_1},
            "--clip-grad": {"metavar": "NORM", "help": "clip the gradient norm to NORM"},
            "--seed": "seed of the weights and of the training clips' motions (val/test clips are fixed)",
        },
        "speed": {
            "--amp": None,
            "--channels-last": {"action": argparse.BooleanOptionalAction,
                                "help": "channels_last_3d memory format (default on)"},
            "--device": None,
            "--threads": "CPU threads per process",
        },
        "run": {**dict.fromkeys(("--out", "--resume", "--overwrite", "--eval-every", "--log-every")),
                "--no-progress": None},
    }


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``train-video``."""
    add_train_parser(
        sub, "train-video", _groups(), _cmd_train_video,
        help="train a 3-D network to tell the direction of an item moving in a clip (made, not downloaded)",
        description="Train a clip classifier: an item (a digit, or a Fashion-MNIST item with --data fashion-mnist) "
        "moves across a canvas; the class is its direction of motion. Options not given come from the recipe.",
    )
