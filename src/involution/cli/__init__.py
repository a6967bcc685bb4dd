"""Command line: ``python -m involution COMMAND`` or ``involution COMMAND``.

One module per family of commands adds their parsers, whose handlers parse, call the library and print.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import classification, deploy, dense, info, models, study, video


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="involution", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (classification, video, info, models, deploy, study, dense):
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"involution {args.command}: aborted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        if os.environ.get("INVOLUTION_DEBUG"):
            raise
        # User errors (missing file, bad checkpoint, bad shape) already say what to fix; no traceback needed.
        print(f"involution {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker process (whose message carries the
    worker's traceback), the worker's own last line, e.g. ``ValueError: DIR/cat.jpg: the image file is truncated``."""
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return f"{lines[-1]} (in a data-loader worker)"
    return text
