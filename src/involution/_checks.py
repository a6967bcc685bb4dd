"""Argument checks with errors that name the argument and say what it accepts.

Shared by the model constructors (values typed by a user through ``--model-kwargs`` arrive here unchecked: a
string, an infinity, a float where an int belongs) and the command line's option types.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def accepted_int(low: int | None = None, high: int | None = None) -> str:
    """What :func:`check_int` accepts, in words: ``"an integer >= 1"``."""
    bounds = ([] if low is None else [f">= {low}"]) + ([] if high is None else [f"<= {high}"])
    return " ".join(["an integer", " and ".join(bounds)]).strip()


def accepted_number(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> str:
    """What :func:`check_number` accepts, in words: ``"a finite number > 0"``."""
    bounds = [] if low is None else [f"{'>' if low_open else '>='} {_show(low)}"]
    bounds += [] if high is None else [f"{'<' if high_open else '<='} {_show(high)}"]
    return " ".join(["a finite number", " and ".join(bounds)]).strip()


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; TypeError for a non-int (bools and floats included), else
    ValueError, both naming ``name`` and the accepted range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {accepted_int(low, high)}, got {value!r}")
    number = int(value)  # numbers.Integral declares no order; an Integral's int() is the same number
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be {accepted_int(low, high)}, got {value!r}")
    return number


def check_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the bounds (``*_open``: the bound itself excluded); TypeError for a
    non-number (bools included), ValueError for NaN, an infinity or a value out of range, naming ``name``."""
    accepted = accepted_number(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {accepted}, got {value!r}")
    number = float(value)
    above = low is None or (number > low if low_open else number >= low)
    below = high is None or (number < high if high_open else number <= high)
    if not (math.isfinite(number) and above and below):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return number


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool: True or False only (a string such as ``"no"`` would be silently true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
