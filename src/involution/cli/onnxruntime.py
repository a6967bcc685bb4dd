"""``involution onnxruntime fetch-headers|build|path``: the onnxruntime custom-op library
(:mod:`involution.ops.onnxruntime_library`) from the command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_onnxruntime(args: argparse.Namespace) -> int:
    from ..ops.onnxruntime_library import fetch_headers, library_path

    try:
        if args.action == "fetch-headers":
            print(f"onnxruntime headers in {fetch_headers(args.dest)}")
        else:
            path = library_path()
            print(path if args.action == "path" else f"built {path}")
    except RuntimeError as exc:  # no headers, no compiler, a failed build or download: exit 1, as scripts expect
        print(f"involution onnxruntime: error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    what = "onnxruntime's involution custom-op library: fetch the headers, build, or say where it is"
    ort = sub.add_parser("onnxruntime", help=what, description=what)
    ort.add_argument("action", choices=("fetch-headers", "build", "path"))
    ort.add_argument("--dest", help="fetch-headers: the include folder to fill (default: the cache)")
    ort.set_defaults(func=_cmd_onnxruntime)
