"""Option types, and the options every train command shares (``involution train``, ``detect train``, ``segment
train``). Every value is checked when the command line is parsed, so a bad one fails at once with a message naming
the option and what it accepts ("argument --eval-every: must be an integer >= 1, got '0'"), not after an epoch."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._checks import accepted_int, accepted_number, check_int, check_number
from ..tasks.engine.run_config import AMP_MODES, DEVICES, SCHEDULES


def _option(check: Callable[[str], Any], accepted: str) -> Callable[[str], Any]:
    """An argparse ``type`` running ``check`` on the text; its error says what is ``accepted`` and what was given."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None

    return parse


def int_option(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``."""
    return _option(lambda text: check_int("value", int(text), low, high), accepted_int(low, high))


def float_option(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within the bounds (``*_open``: the bound itself excluded)."""
    return _option(lambda text: check_number("value", float(text), low, high, low_open, high_open),
                   accepted_number(low, high, low_open, high_open))


positive_int = int_option(low=1)
non_negative_int = int_option(low=0)
seed_int = int_option(low=0, high=2**32 - 1)  # NumPy's seeds are 32-bit
positive_float = float_option(low=0.0, low_open=True)
non_negative_float = float_option(low=0.0)
fraction_below_1 = float_option(low=0.0, high=1.0, high_open=True)  # [0, 1)
fraction_above_0 = float_option(low=0.0, high=1.0, low_open=True)  # (0, 1]
fraction_in_0_1 = float_option(low=0.0, high=1.0)  # [0, 1]

# A command's own part of one option: its help text, or argparse keywords (help, choices, type, ...); None: none.
OwnOption = str | Mapping[str, Any] | None

# Every train command has these options, checked the same way; each command lays them out in its groups and adds its
# own help, choices and options.
SHARED_TRAINING_OPTIONS: dict[str, dict[str, Any]] = {
    **{key: {} for key in ("--data", "--data-dir", "--model", "--checkpoint")},
    **{key: {"type": positive_int} for key in ("--image-size", "--epochs", "--batch-size", "--threads")},
    "--workers": {"type": non_negative_int},
    "--model-kwargs": {"nargs": "+", "metavar": "KEY=VALUE"},
    **{key: {"type": positive_float} for key in ("--lr", "--clip-grad")},
    **{key: {"type": non_negative_float} for key in ("--weight-decay", "--warmup-epochs")},
    "--momentum": {"type": fraction_below_1},
    "--seed": {"type": seed_int},
    "--schedule": {"choices": SCHEDULES},
    "--amp": {"choices": AMP_MODES},
    "--device": {"choices": DEVICES},
    "--out": {"help": "run directory (default: a new folder under runs/)"},
    "--resume": {"action": "store_true", "help": "continue the run in --out from its last checkpoint"},
    "--overwrite": {"action": "store_true",
                    "help": "start afresh in an --out holding an earlier run, replacing its files (without it, "
                    "such an --out is refused)"},
    "--eval-every": {"type": positive_int, "metavar": "EPOCHS"},
    "--log-every": {"type": positive_int, "metavar": "STEPS"},
    "--no-progress": {"action": "store_true"},
}


def add_train_parser(sub: argparse._SubParsersAction, name: str, groups: Mapping[str, Mapping[str, OwnOption]],
                     func: Callable[[argparse.Namespace], int], **parser_keywords: Any) -> argparse.ArgumentParser:
    """Add a train command: ``groups`` (title -> flag -> the command's own part of the option) in order, each flag
    of :data:`SHARED_TRAINING_OPTIONS` with its shared type. Every shared option must be laid out. Defaults are
    SUPPRESS: only the options typed reach the config, so recipes and resumed runs fill in the rest."""
    missing = SHARED_TRAINING_OPTIONS.keys() - {flag for options in groups.values() for flag in options}
    if missing:
        raise ValueError(f"train command {name!r} lacks the shared options {sorted(missing)}")
    parser = sub.add_parser(name, argument_default=argparse.SUPPRESS, **parser_keywords)
    for title, options in groups.items():
        group = parser.add_argument_group(title)
        for flag, own in options.items():
            keywords = {"help": own} if isinstance(own, str) else dict(own or {})
            group.add_argument(flag, **{**SHARED_TRAINING_OPTIONS.get(flag, {}), **keywords})
    parser.set_defaults(func=func)
    return parser


def parse_model_kwargs(items: Sequence[str]) -> dict[str, object]:
    """``["width=0.25", "drop_rate=0.1"]`` -> ``{"width": 0.25, "drop_rate": 0.1}`` (values as Python literals).

    A key given twice is refused: which of the two values was meant cannot be known."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kwargs expects KEY=VALUE items, got {item!r}")
        if key in out:
            raise ValueError(f"--model-kwargs gives {key!r} twice ({key}={out[key]!r} and {item}); give it once")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def train_options(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, Any]]:
    """What a train command was given (options typed only: SUPPRESS defaults): the config values, with
    ``--model-kwargs`` parsed, and the run's keyword arguments for ``train`` (``out``, ``resume``, ``overwrite``,
    ``progress``)."""
    given = vars(args).copy()
    for key in ("command", "action", "func"):
        given.pop(key, None)
    run = {"out": given.pop("out", None), "resume": given.pop("resume", False),
           "overwrite": given.pop("overwrite", False), "progress": not given.pop("no_progress", False)}
    if "model_kwargs" in given:
        given["model_kwargs"] = parse_model_kwargs(given["model_kwargs"])
    return given, run
