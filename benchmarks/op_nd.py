#!/usr/bin/env python
"""Benchmark of involution1d / involution3d against their depthwise-convolution twins on the CPU.

Per shape and layout (``ncl`` / ``nlc`` for 1-D, ``ncdhw`` / ``ndhwc`` for 3-D), forward (under ``no_grad``) and
forward+backward (w.r.t. input and weight) median time with its spread (interquartile range / median), and peak
extra memory of one pass measured in a fresh child process (VmHWM after a reset, as ``benchmarks/op.py``):

* ``involution`` the op with kernels laid out as a kernel generator in that layout makes them
  (``(N, G*K^d, *out)`` in the input's layout, viewed with ``unflatten``);
* ``dwconv``     ``nn.Conv1d`` / ``nn.Conv3d`` with ``groups=C``, the static-weight twin: the reference of every
                 ratio, in the same layout ("vs dwconv") and in its faster one ("vs best dwconv", the issue's).

Timing is interleaved: each round runs every (method, layout, pass) once in a rotating order, so machine noise
hits them alike. "Must exist" is the bytes of the output (forward), plus its gradient and both input gradients
(forward+backward); the involution's kernels count as an input.

Usage::

    python benchmarks/op_nd.py                       # the issue's shapes (about 10 min on 2 cores)
    python benchmarks/op_nd.py --quick               # tiny shapes, 3 rounds
    python benchmarks/op_nd.py --markdown out.md     # also write the tables as markdown
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import _util  # first: it puts this checkout's src/ on sys.path

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from involution.ops import involution1d, involution3d, output_size  # noqa: E402


@dataclass(frozen=True)
class Shape:
    dims: int
    n: int
    c: int
    size: tuple[int, ...]
    k: int
    group_channels: int = 16

    @property
    def label(self) -> str:
        return f"{self.dims}D N={self.n} C={self.c} {'x'.join(map(str, self.size))} K={self.k}"


FULL = [Shape(1, 8, 256, (4096,), 7), Shape(3, 2, 64, (16, 56, 56), 3), Shape(3, 2, 64, (16, 56, 56), 5)]
QUICK = [Shape(1, 2, 32, (256,), 7), Shape(3, 1, 16, (4, 12, 12), 3)]
LAYOUTS = {1: ("ncl", "nlc"), 3: ("ncdhw", "ndhwc")}
METHODS = ("involution", "dwconv")


def _layout(t: Tensor, layout: str) -> Tensor:
    if layout == "nlc":  # (N, L, C) in memory, seen as (N, C, L)
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "ndhwc":
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t.contiguous()


class Case:
    """One method's tensors for one shape and layout, and its two passes."""

    def __init__(self, method: str, shape: Shape, layout: str) -> None:
        gen = torch.Generator().manual_seed(0)
        d, k = shape.dims, shape.k
        self.x = _layout(torch.randn(shape.n, shape.c, *shape.size, generator=gen), layout).requires_grad_()
        out = tuple(output_size(s, k, 1, k // 2, 1) for s in shape.size)
        if method == "dwconv":
            conv = (nn.Conv1d if d == 1 else nn.Conv3d)(shape.c, shape.c, k, padding=k // 2, groups=shape.c,
                                                          bias=False)
            self.module = conv.to(memory_format=torch.channels_last_3d) if layout == "ndhwc" else conv
            self.w = None
        else:
            g = shape.c // shape.group_channels
            flat = _layout(torch.randn(shape.n, g * k**d, *out, generator=gen) / k**d, layout)
            self.w = flat.unflatten(1, (g, *(k,) * d)).detach().requires_grad_()  # a generator's output, viewed
            self.op = involution1d if d == 1 else involution3d
        self.padding = k // 2

    def forward(self) -> Tensor:
        if self.w is None:
            return self.module(self.x)
        return self.op(self.x, self.w, 1, self.padding, 1)

    def forward_backward(self) -> Tensor:
        out = self.forward()
        out.backward(torch.ones_like(out))
        return out

    def zero_grad(self) -> None:
        self.x.grad = None
        if self.w is not None:
            self.w.grad = None
        else:
            self.module.zero_grad(set_to_none=True)

    def run(self, pass_: str) -> Tensor:
        if pass_ == "fwd":
            with torch.no_grad():
                return self.forward()
        out = self.forward_backward()
        self.zero_grad()
        return out



def needed_mib(shape: Shape, pass_: str) -> float:
    """The involution's bytes that must exist: the output (stride 1, 'same' padding: the input's size); for
    forward+backward also its gradient and the gradients of the input and the kernels (float32)."""
    features = shape.n * shape.c * math.prod(shape.size)
    kernels = shape.n * (shape.c // shape.group_channels) * shape.k**shape.dims * math.prod(shape.size)
    return 4 * (features if pass_ == "fwd" else 3 * features + kernels) / 2**20


def time_all(shapes: list[Shape], rounds: int, warmup: int) -> dict[tuple, list[float]]:
    cells = [(s, lay, m, p) for s in shapes for lay in LAYOUTS[s.dims] for m in METHODS for p in ("fwd", "fwdbwd")]
    cases = {(s, lay, m): Case(m, s, lay) for s, lay, m, _ in cells}
    times: dict[tuple, list[float]] = {c: [] for c in cells}
    for r in range(warmup + rounds):
        shift = r % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            s, lay, m, p = cell
            start = time.perf_counter()
            cases[(s, lay, m)].run(p)
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[cell].append(elapsed)
        print(f"round {r + 1}/{warmup + rounds} done", file=sys.stderr, flush=True)
    return times


def child_main(spec: dict) -> int:
    """In a fresh process: one pass's peak extra RSS."""
    torch.set_num_threads(spec["threads"])
    shape = Shape(**{**spec["shape"], "size": tuple(spec["shape"]["size"])})
    case = Case(spec["method"], shape, spec["layout"])
    reset_ok = _util.hwm_reset_works()
    case.run(spec["pass"])  # warm-up: one-time allocations are not the op's
    gc.collect()
    _util.reset_peak_rss()
    base = _util.proc_status_kib("VmRSS")["VmRSS"]
    out = case.run(spec["pass"])
    peak = _util.proc_status_kib("VmHWM")["VmHWM"]
    del out
    print(json.dumps({"peak_mib": (peak - base) / 1024, "reset_ok": reset_ok}), flush=True)
    return 0


def peak_mib(shape: Shape, layout: str, method: str, pass_: str, threads: int) -> float | None:
    spec = {"shape": asdict(shape), "layout": layout, "method": method, "pass": pass_, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072", MALLOC_TOP_PAD_="0")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])["peak_mib"] if lines else None


def tables(shapes: list[Shape], times: dict, memory: dict, markdown: bool) -> str:
    out = []
    for pass_, title in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        rows = []
        for s in shapes:
            for lay in LAYOUTS[s.dims]:
                inv, dw = times[(s, lay, "involution", pass_)], times[(s, lay, "dwconv", pass_)]
                best_dw = min(_util.median(times[(s, other, "dwconv", pass_)]) for other in LAYOUTS[s.dims])
                mem, need = memory.get((s, lay, "involution", pass_)), needed_mib(s, pass_)
                rows.append([s.label, lay, f"{1e3 * _util.median(inv):.1f} ±{100 * _util.rel_iqr(inv):.0f}%",
                             f"{1e3 * _util.median(dw):.1f} ±{100 * _util.rel_iqr(dw):.0f}%",
                             f"{_util.median(inv) / _util.median(dw):.2f}x", f"{_util.median(inv) / best_dw:.2f}x",
                             "-" if mem is None else f"{mem:.0f} / {need:.0f} MiB ({mem / need:.2f}x)"])
        out.append(f"{title}:\n" + _util.render_table(
            ["shape", "layout", "involution ms", "dwconv ms", "vs dwconv", "vs best dwconv",
             "peak extra / must exist"], rows, markdown, [False, False, True, True, True, True, True]))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurement")
    parser.add_argument("--markdown", help="also write the tables to this markdown file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        return child_main(json.loads(args._child))
    torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else FULL
    times = time_all(shapes, args.rounds or (3 if args.quick else 7), warmup=1)
    memory = {}
    if not args.no_memory:
        for s in shapes:
            for lay in LAYOUTS[s.dims]:
                for pass_ in ("fwd", "fwdbwd"):
                    memory[(s, lay, "involution", pass_)] = peak_mib(s, lay, "involution", pass_, args.threads)
    header = (f"{_util.cpu_model()}, {args.threads} threads, torch {torch.__version__}, "
              f"revision {_util.git_revision(_util.ROOT)}, load {_util.load_average()}")
    print(header)
    print(tables(shapes, times, memory, markdown=False))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{header}\n\n{tables(shapes, times, memory, markdown=True)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
