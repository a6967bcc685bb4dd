"""Command line: ``python -m involution COMMAND`` or ``involution COMMAND``.

Thin argument parsing over the library; each command's work lives in the package, not here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    """Show the version and backends, check the fastest backend against the fallback, and time one layer."""
    import time

    import torch

    from . import __version__, ops
    from .layers import Involution2d

    print(f"involution {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    status = ops.backend_status()
    for name, state in status.items():
        print(f"  backend {name:7s} {state if len(state) < 200 else state[:200] + '...'}")
    fast = [b for b in ("cpu",) if status.get(b) == "available"]

    torch.manual_seed(0)
    n, c, size = args.batch, args.channels, args.size
    layer = Involution2d(c, kernel_size=7).eval()
    x = torch.randn(n, c, size, size)
    with torch.inference_mode():
        kernel = layer.generate_kernel(x)
        with ops.use_backend("torch"):
            expected = ops.involution2d(x, kernel, padding=3)
        for name in fast:
            with ops.use_backend(name):
                got = ops.involution2d(x, kernel, padding=3)
            err = (got - expected).abs().max().item()
            print(f"  check   {name:7s} max |{name} - torch| = {err:.2e}")
            if not err < 1e-3:
                print("  MISMATCH: the compiled backend disagrees with the fallback", file=sys.stderr)
                return 1

        def median_ms(fn) -> float:
            fn()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2] * 1e3

        x_cl = x.contiguous(memory_format=torch.channels_last)
        layer_cl = layer.to(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c, bias=False).to(memory_format=torch.channels_last)
        print(f"  timing  Involution2d({c}, 7) on ({n}, {c}, {size}, {size}) channels_last, median of {args.repeats}:")
        print(f"          depthwise Conv2d({c}, {c}, 7): {median_ms(lambda: conv(x_cl)):8.2f} ms")
        print(f"          Involution2d layer:        {median_ms(lambda: layer_cl(x_cl)):8.2f} ms (default backend)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    for name in list_models(args.filter or ""):
        print(name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """Parameters and multiply-adds (the involution op included) per stage."""
    from .models import summary

    size = None if args.input_size is None else tuple(args.input_size)
    print(summary(args.model, input_size=size, depth=args.depth))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Official mmcls checkpoint (.pth) -> this package's safetensors format."""
    from .models import convert_official

    out = convert_official(args.src, args.dst, name=args.model)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="involution", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, backends, a correctness check and a quick timing")
    info.add_argument("--batch", type=int, default=8)
    info.add_argument("--channels", type=int, default=64)
    info.add_argument("--size", type=int, default=56)
    info.add_argument("--repeats", type=int, default=10)
    info.set_defaults(func=_cmd_info)

    models = sub.add_parser("models", help="list the registered model names")
    models.add_argument("filter", nargs="?", help="a glob such as 'rednet*'")
    models.set_defaults(func=_cmd_models)

    summ = sub.add_parser("summary", help="parameters and multiply-adds of a model, per stage")
    summ.add_argument("model", help="registry name, e.g. rednet50")
    summ.add_argument("--input-size", type=int, nargs="+", metavar="N", help="C H W or H W (default: the model's)")
    summ.add_argument("--depth", type=int, default=1, help="1: stages, 2: blocks too")
    summ.set_defaults(func=_cmd_summary)

    convert = sub.add_parser("convert", help="convert an official mmcls RedNet checkpoint to safetensors")
    convert.add_argument("src", help="official checkpoint, e.g. rednet50-1c7a7d5d.pth")
    convert.add_argument("dst", help="output .safetensors path")
    convert.add_argument("--model", help="registry name; inferred from the checkpoint's keys when omitted")
    convert.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        if os.environ.get("INVOLUTION_DEBUG"):
            raise
        # User errors (missing file, bad checkpoint, bad shape) already say what to fix; no traceback needed.
        print(f"involution {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
