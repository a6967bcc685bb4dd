"""The command line and the loaders under careless or hostile use (issue 21): one-line errors that name the option
or the file, never a traceback, never a clobbered run or file."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from involution.cli import build_parser, main
from involution.models import create_model, save_checkpoint

# -- every option validated when the command line is parsed ------------------------------------------------------

_BAD_OPTIONS = [
    # (argv, the option the message must name)
    (["train", "--eval-every", "0"], "--eval-every"),
    (["train", "--log-every", "0"], "--log-every"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "-4"], "--batch-size"),
    (["train", "--image-size", "0"], "--image-size"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--momentum", "1.5"], "--momentum"),
    (["train", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--label-smoothing", "1"], "--label-smoothing"),
    (["train", "--clip-grad", "0"], "--clip-grad"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--val-fraction", "1"], "--val-fraction"),
    (["train", "--train-fraction", "0"], "--train-fraction"),
    (["train", "--train-fraction", "abc"], "--train-fraction"),
    (["eval", "--checkpoint", "x", "--data", "digits", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "x", "--data", "digits", "--workers", "-2"], "--workers"),
    (["predict", "--checkpoint", "x", "--topk", "0", "a.png"], "--topk"),
    (["visualize", "--checkpoint", "x", "--pixel", "1.5", "3", "a.png"], "--pixel"),
    (["export", "--model", "rednet26", "--out", "m.onnx", "--batch", "0"], "--batch"),
    (["export", "--model", "rednet26", "--out", "m.onnx", "--num-classes", "-1"], "--num-classes"),
    (["export", "--model", "rednet26", "--out", "m.onnx", "--opset", "9"], "--opset"),
    (["export", "--model", "rednet26", "--out", "m.onnx", "--input-size", "3", "0", "8"], "--input-size"),
    (["summary", "rednet26", "--depth", "0"], "--depth"),
    (["summary", "rednet26", "--input-size", "-8", "8"], "--input-size"),
    (["info", "--repeats", "0"], "--repeats"),
    (["info", "--channels", "0"], "--channels"),
    (["study", "width", "--seeds", "-1"], "--seeds"),
    (["study", "width", "--threads", "0"], "--threads"),
    (["detect", "train", "--epochs", "0"], "--epochs"),
    (["detect", "train", "--num-train", "0"], "--num-train"),
    (["detect", "train", "--eval-every", "0"], "--eval-every"),
    (["detect", "train", "--lr", "-0.1"], "--lr"),
    (["segment", "train", "--crop-size", "0"], "--crop-size"),
    (["segment", "train", "--aux-weight", "nan"], "--aux-weight"),
    (["detect", "eval", "--checkpoint", "x", "--pictures", "-1"], "--pictures"),
    (["detect", "predict", "--checkpoint", "x", "--threshold", "1.5", "a.png"], "--threshold"),
]


@pytest.mark.parametrize("argv, option", _BAD_OPTIONS, ids=[" ".join(a) for a, _ in _BAD_OPTIONS])
def test_bad_option_values_are_refused_when_parsing(argv, option, capsys):
    # the parser alone: before any work starts (an --eval-every 0 used to fail after a whole epoch)
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    last = err.strip().splitlines()[-1]  # argparse: the usage, then one line naming the option and its range
    assert option in last and "must be" in last and "got" in last and "Traceback" not in err, err


def test_a_bad_option_exits_with_a_usage_error_through_main(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--checkpoint", "x", "--topk", "0", "a.png"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--topk" in err and ">= 1" in err, err


@pytest.mark.parametrize("value, words", [
    ("width=1e400", ["width", "finite"]),
    ("width=abc", ["width", "'abc'"]),
    ("drop_rate=x", ["drop_rate"]),
    ("num_classes=3", ["num_classes", "data set"]),
])
def test_bad_model_kwargs_are_one_line_errors(value, words, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--epochs", "1", "--model-kwargs", value, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not out.exists(), "a run that never started leaves no directory"


@pytest.mark.parametrize("name", ["rednet26_small", "resnet26_small"])
@pytest.mark.parametrize("kwargs, words", [
    ({"width": float("inf")}, ["width", "finite"]),
    ({"width": float("nan")}, ["width", "finite"]),
    ({"width": "abc"}, ["width", "'abc'"]),
    ({"width": True}, ["width"]),
    ({"width": 1e6}, ["width", "<= 16"]),
    ({"drop_rate": "x"}, ["drop_rate"]),
    ({"num_classes": "x"}, ["num_classes"]),
    ({"num_classes": 2.5}, ["num_classes"]),
    ({"in_chans": 1.5}, ["in_chans"]),
    ({"zero_init_residual": "no"}, ["zero_init_residual", "True or False"]),
    ({"small_input": 3}, ["small_input", "True or False"]),
    ({"grad_checkpointing": "yes"}, ["grad_checkpointing"]),
])
def test_model_constructors_name_their_bad_arguments(name, kwargs, words):
    with pytest.raises((ValueError, TypeError)) as err:
        create_model(name, **{"num_classes": 10, **kwargs})
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("kwargs, word", [
    ({"reduction_ratio": "a"}, "reduction_ratio"),
    ({"reduction_ratio": 1.5}, "reduction_ratio"),
    ({"group_channels": 2.5}, "group_channels"),
    ({"recompute_kernel": 3}, "recompute_kernel"),
    ({"coord_channels": "x"}, "coord_channels"),
    ({"avg_down": "x"}, "avg_down"),
])
def test_rednet_involution_arguments_are_checked(kwargs, word):
    with pytest.raises((ValueError, TypeError)) as err:
        create_model("rednet26_small", num_classes=10, **kwargs)
    assert word in str(err.value), str(err.value)
