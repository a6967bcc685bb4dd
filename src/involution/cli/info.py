"""``involution info``: versions, backends, a correctness check and a quick timing
(:func:`involution.layers.selfcheck.self_check`), printed."""

from __future__ import annotations

import argparse
import sys

from .options import positive_int


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..layers.selfcheck import self_check

    print(f"involution {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    n, c, size = args.batch, args.channels, args.size
    found = self_check(n, c, size, args.repeats)
    for name, state in found.backends.items():
        print(f"  backend {name:7s} {state if len(state) < 200 else state[:200] + '...'}")
    if found.onnxruntime is not None:
        print(f"  onnxruntime custom-op library: {found.onnxruntime}")
    for name, err in found.errors.items():
        print(f"  check   {name:7s} max |{name} - torch| = {err:.2e}")
    if not found.ok:
        print("  MISMATCH: the compiled backend disagrees with the fallback", file=sys.stderr)
        return 1
    print(f"  timing  Involution2d({c}, 7) on ({n}, {c}, {size}, {size}) channels_last, median of {args.repeats}:")
    print(f"          depthwise Conv2d({c}, {c}, 7): {found.conv_ms:8.2f} ms")
    print(f"          Involution2d layer:        {found.layer_ms:8.2f} ms (default backend)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="versions, backends, a correctness check and a quick timing")
    info.add_argument("--batch", type=positive_int, default=8)
    info.add_argument("--channels", type=positive_int, default=64)
    info.add_argument("--size", type=positive_int, default=56)
    info.add_argument("--repeats", type=positive_int, default=10)
    info.set_defaults(func=_cmd_info)
