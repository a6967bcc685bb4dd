#!/usr/bin/env python
"""How close the involution forward comes to the machine's memory bandwidth on the CPU.

The forward must read its input ``(N, C, H, W)`` and its per-pixel kernels ``(N, G, K, K, Ho, Wo)`` and write its
output ``(N, C, Ho, Wo)``; a kernel that moved only those bytes, at the speed of a plain tensor copy, would be as
fast as the memory allows. Per shape, dtype and layout this script times the op (``involution.ops.involution2d``
on the library's default backend) and ``dst.copy_(src)`` of a buffer of the same total bytes (a copy reads half and
writes half), round-robin in one process, and reports both bandwidths (bytes / median time), their ratio, and the
op's arithmetic rate (2 flops per tap of every output element), which says when the op is compute- rather than
memory-bound.

The kernels are made as a RedNet makes them: a 1x1 convolution's output ``(N, G*K*K, Ho, Wo)`` in the input's
layout, viewed as ``(N, G, K, K, Ho, Wo)`` (in channels_last that view is strided, read in place by the op).

Usage::

    python benchmarks/op_bandwidth.py                               # RedNet-50's stage shapes, batch 8
    python benchmarks/op_bandwidth.py --shapes 64x56 --dtypes float32 --layouts channels_last --repeats 30
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import _util  # first: it puts this checkout's src/ on sys.path

import torch  # noqa: E402

from involution.ops import involution2d  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def operands(c: int, hw: int, batch: int, group_channels: int, k: int, dtype: torch.dtype, layout: torch.memory_format):
    """Input ``(N, C, H, W)`` and kernels ``(N, G, K, K, H, W)`` (a generator-like view) of one stage shape."""
    g = torch.Generator().manual_seed(c * hw)
    x = torch.randn(batch, c, hw, hw, generator=g).to(dtype).contiguous(memory_format=layout)
    groups = c // group_channels
    flat = torch.randn(batch, groups * k * k, hw, hw, generator=g).to(dtype).contiguous(memory_format=layout)
    return x, flat.unflatten(1, (groups, k, k))


def time_round_robin(fns: dict[str, object], repeats: int, warmup: int) -> dict[str, list[float]]:
    """{name: seconds per call}, the callables interleaved (order reversed every other round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="64x56,128x28,256x14,512x7", help="comma list of CxH (H=W)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--group-channels", type=int, default=16)
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown ('-': print it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or _util.usable_cpus())
    heads = ["shape", "dtype", "layout", "op ms", "op GB/s", "copy GB/s", "op / copy", "op GFLOP/s", "runs (±IQR/2)"]
    rows = []
    load_start = _util.load_average()
    for spec in args.shapes.split(","):
        c, hw = (int(v) for v in spec.split("x"))
        for dname in args.dtypes.split(","):
            for lname in args.layouts.split(","):
                x, w = operands(c, hw, args.batch, args.group_channels, args.kernel, DTYPES[dname], LAYOUTS[lname])
                pad = args.kernel // 2
                moved = (2 * x.numel() + w.numel()) * x.element_size()  # read x and w, write y (y is x's size)
                src = torch.empty(moved // 2 // x.element_size(), dtype=x.dtype).fill_(1.0)
                dst = torch.empty_like(src)
                with torch.inference_mode():
                    times = time_round_robin(
                        {"op": lambda: involution2d(x, w, 1, pad, 1), "copy": lambda: dst.copy_(src)},
                        args.repeats, args.warmup)
                op_s, copy_s = _util.median(times["op"]), _util.median(times["copy"])
                spread = max(_util.rel_iqr(times["op"]), _util.rel_iqr(times["copy"]))
                op_bw, copy_bw = moved / op_s / 1e9, 2 * src.numel() * src.element_size() / copy_s / 1e9
                flops = 2 * x.numel() * args.kernel**2  # a multiply-add per tap of every output element
                rows.append([f"C{c}@{hw}^2", dname, lname, f"{op_s * 1e3:.2f}", f"{op_bw:.1f}", f"{copy_bw:.1f}",
                             f"{op_bw / copy_bw:.2f}", f"{flops / op_s / 1e9:.0f}",
                             f"{args.repeats} (±{100 * spread:.0f}%)"])
                print(" ".join(rows[-1]), file=sys.stderr, flush=True)
    command = "python benchmarks/op_bandwidth.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    setup = [f"command: `{command}`", f"CPU: {_util.cpu_model()} ({_util.cpu_precision_flags()})",
             f"threads: {torch.get_num_threads()}; batch {args.batch}, K={args.kernel}, "
             f"{args.group_channels} channels per group, stride 1",
             f"load avg: {load_start} (start), {_util.load_average()} (end)"]
    right = [False, False, False] + [True] * 6
    print("\n".join(setup) + "\n\n" + _util.render_table(heads, rows, False, right))
    if args.markdown:
        md = "".join(f"- {line}\n" for line in setup) + "\n" + _util.render_table(heads, rows, True, right) + "\n"
        _util.write_markdown(args.markdown, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
