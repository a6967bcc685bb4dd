#!/usr/bin/env python
"""Benchmark of the involution2d operator on the CPU at RedNet-50 stage shapes.

Compares, per shape, forward and forward+backward median time and peak extra memory of

* ``unfold``       the plain ``F.unfold`` formulation (materialises N*C*Kh*Kw*Ho*Wo), defined in this file;
* ``torch:nchw``   ``involution2d`` on the pure-PyTorch backend, NCHW input, contiguous 6-D weight;
* ``torch:cl``     the same with a channels_last input and a channels_last ``(N, G*K*K, Ho, Wo)`` weight viewed as
                   6-D with ``.unflatten(1, (G, K, K))`` (what a channels_last kernel generator produces);
* ``cpu:nchw``, ``cpu:cl``  the same on the compiled C++ backend (skipped, and listed, while unavailable), which runs
                   its NCHW kernels for the NCHW input and its NHWC kernels for the channels_last one;
* ``dwconv:nchw``, ``dwconv:cl``  ``nn.Conv2d(C, C, K, padding=K//2, groups=C, bias=False)``, the static-weight twin
                   and the reference of every ratio (always timed).

Shapes (``--shapes``, ``CxH`` with H = W): N=8, C=64@56^2, 128@28^2, 256@14^2, 512@7^2, G=C/16, K=7, stride 1,
padding 3, float32.

Timing runs in this process, interleaved: after a warm-up, each round times every method once (forward, then
forward+backward) in a rotating order, so machine noise hits all methods alike. Medians are reported. "Forward" is
run under ``torch.no_grad()`` (inference); "fwd+bwd" is a forward with autograd on, then ``out.backward(grad)``
w.r.t. the input and the weight (both ``requires_grad``), with ``grad`` laid out like ``out``.

Peak extra memory is measured per (method, shape, pass) in a fresh child process (``--_child``): it builds the
inputs, runs the pass once as warm-up, resets the RSS high-water mark (``echo 5 > /proc/self/clear_refs``), runs the
pass again and reports VmHWM minus the RSS at the reset. The child runs with glibc's mmap threshold fixed at 64 KiB
and trimming on, so freed buffers go back to the OS and reused heap memory cannot hide an allocation. For
fwd+bwd the output gradient is allocated inside the measured pass (as autograd would create it), so the peak is
comparable with the bytes that must exist anyway: output + its gradient + grad_input + grad_weight.

Usage::

    python benchmarks/op.py                          # full run (~10 min on 2 cores)
    python benchmarks/op.py --quick                  # smoke test: tiny shapes, 3 repeats
    python benchmarks/op.py --shapes 256x14 --methods torch,cpu
    python benchmarks/op.py --markdown docs/benchmarks_op.md   # also write a markdown section
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import _util  # first: it puts this checkout's src/ on sys.path (the script's folder is already there)

ROOT = _util.ROOT
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import involution  # noqa: E402
from involution.ops import available_backends, backend_status, use_backend  # noqa: E402

MiB = 1 << 20
DEFAULT_SHAPES = "64x56,128x28,256x14,512x7"
QUICK_SHAPES = "32x12,64x6"


# ------------------------------------------------------------------------------------------ the unfold baseline
def unfold_involution2d(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """Involution as in the reference implementation: unfold the input (N, C*K*K, Ho*Wo), multiply, sum the taps.

    Materialises the N*C*Kh*Kw*Ho*Wo unfolded input and a product of the same size.
    """
    n, c = x.shape[:2]
    _, g, kh, kw, ho, wo = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, g, c // g, kh * kw, ho, wo)
    return (weight.reshape(n, g, 1, kh * kw, ho, wo) * cols).sum(3).view(n, c, ho, wo)


# ------------------------------------------------------------------------------------------------ shapes
@dataclass(frozen=True)
class Shape:
    n: int
    c: int
    h: int
    w: int
    g: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    @property
    def label(self) -> str:
        return f"{self.c}x{self.h}" if self.h == self.w else f"{self.c}x{self.h}x{self.w}"

    @property
    def out_hw(self) -> tuple[int, int]:
        def o(s: int) -> int:
            return (s + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1

        return o(self.h), o(self.w)

    def numel(self, what: str) -> int:
        ho, wo = self.out_hw
        return {
            "input": self.n * self.c * self.h * self.w,
            "output": self.n * self.c * ho * wo,
            "weight": self.n * self.g * self.k * self.k * ho * wo,
            "conv_weight": self.c * self.k * self.k,
            "unfolded": self.n * self.c * self.k * self.k * ho * wo,
        }[what]


def parse_shapes(spec: str, n: int, group_channels: int, k: int) -> list[Shape]:
    shapes = []
    for item in spec.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.split("x")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--shapes: expected items like 64x56 (C x H, H = W) or 64x56x40, got {item!r}")
        c, h = int(parts[0]), int(parts[1])
        w = int(parts[2]) if len(parts) == 3 else h
        if c % group_channels:
            raise SystemExit(f"--shapes: C={c} is not a multiple of --group-channels={group_channels}")
        shapes.append(Shape(n=n, c=c, h=h, w=w, g=c // group_channels, k=k, padding=k // 2))
    if not shapes:
        raise SystemExit("--shapes: no shape given")
    return shapes


# ------------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "unfold" | "backend" | "dwconv"
    layout: str  # "nchw" | "cl"
    backend: str | None = None

    @property
    def layout_label(self) -> str:
        return "channels_last" if self.layout == "cl" else "NCHW"

    @property
    def family(self) -> str:
        return self.name.split(":")[0]


ALL_METHODS = [
    Method("unfold", "unfold", "nchw"),
    Method("torch:nchw", "backend", "nchw", "torch"),
    Method("torch:cl", "backend", "cl", "torch"),
    Method("cpu:nchw", "backend", "nchw", "cpu"),
    Method("cpu:cl", "backend", "cl", "cpu"),
    Method("dwconv:nchw", "dwconv", "nchw"),
    Method("dwconv:cl", "dwconv", "cl"),
]
METHODS = {m.name: m for m in ALL_METHODS}
REFERENCES = ("dwconv:nchw", "dwconv:cl")
CHECK_REFERENCES = ("torch:nchw", "unfold", "torch:cl")


def parse_methods(spec: str) -> list[Method]:
    """Comma list of method names; a bare family name ("torch", "cpu", "dwconv") selects all its layouts."""
    if spec.strip() in ("", "all"):
        return list(ALL_METHODS)
    chosen: set[str] = set()
    for tok in spec.split(","):
        tok = tok.strip()
        if not tok:
            continue
        hits = [m.name for m in ALL_METHODS if m.name == tok or m.family == tok]
        if not hits:
            raise SystemExit(f"--methods: unknown method {tok!r}; known: {', '.join(METHODS)} (or a family name)")
        chosen.update(hits)
    chosen.update(REFERENCES)  # the ratios need them
    return [m for m in ALL_METHODS if m.name in chosen]


def memory_format(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "cl" else torch.contiguous_format


class Case:
    """One method's inputs at one shape, and its forward / forward+backward passes."""

    def __init__(self, method: Method, shape: Shape, x0: Tensor, w0: Tensor) -> None:
        self.method, self.shape = method, shape
        mf = memory_format(method.layout)
        s = shape
        self.x = x0.detach().clone(memory_format=mf).requires_grad_()
        self.ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        if method.kind == "dwconv":
            conv = nn.Conv2d(s.c, s.c, s.k, stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.c,
                             bias=False)
            self.conv = conv.to(memory_format=mf)
            self.leaves = [self.x, self.conv.weight]
            self.op = lambda: self.conv(self.x)
            return
        if method.kind == "unfold":
            self.w = w0.detach().clone().requires_grad_()
            self.weight6 = lambda: self.w
            self.op = lambda: unfold_involution2d(self.x, self.weight6(), s.stride, s.padding, s.dilation)
        else:
            if method.layout == "cl":
                # (N, G*K*K, Ho, Wo) channels_last, as a channels_last kernel generator produces it
                self.w = w0.detach().flatten(1, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
                self.weight6 = lambda: self.w.unflatten(1, (s.g, s.k, s.k))
            else:
                self.w = w0.detach().clone().requires_grad_()
                self.weight6 = lambda: self.w
            self.op = lambda: involution.involution2d(self.x, self.weight6(), s.stride, s.padding, s.dilation)
            self.ctx = lambda: use_backend(method.backend)
        self.leaves = [self.x, self.w]

    def zero_grad(self) -> None:
        for t in self.leaves:
            t.grad = None

    def forward(self) -> Tensor:
        with torch.no_grad(), self.ctx():
            return self.op()

    def forward_backward(self, grad: Tensor | None) -> Tensor:
        """Forward with autograd, then backward of ``grad`` (allocated here, like ``out``, when None)."""
        with self.ctx():
            out = self.op()
            out.backward(torch.randn_like(out) if grad is None else grad)
        return out

    def grads(self) -> tuple[Tensor, Tensor | None]:
        """(grad_input, grad_weight as 6-D) after forward_backward; the conv weight's gradient is not comparable."""
        if self.method.kind == "dwconv":
            return self.x.grad, None
        gw = self.w.grad
        if gw.dim() == 4:
            gw = gw.unflatten(1, (self.shape.g, self.shape.k, self.shape.k))
        return self.x.grad, gw


def base_tensors(shape: Shape, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Input (N,C,H,W), weight (N,G,K,K,Ho,Wo) and output gradient (N,C,Ho,Wo), contiguous, float32."""
    gen = torch.Generator().manual_seed(seed)
    ho, wo = shape.out_hw
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, generator=gen)
    w = torch.randn(shape.n, shape.g, shape.k, shape.k, ho, wo, generator=gen) / shape.k
    gy = torch.randn(shape.n, shape.c, ho, wo, generator=gen)
    return x, w, gy


def needed_bytes(method: Method, shape: Shape, pass_: str) -> int:
    """Bytes that must exist anyway: the output (fwd); output + its gradient + grad_input + grad_weight (fwd+bwd)."""
    out = shape.numel("output")
    if pass_ == "fwd":
        return 4 * out
    gw = shape.numel("conv_weight") if method.kind == "dwconv" else shape.numel("weight")
    return 4 * (2 * out + shape.numel("input") + gw)


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    fwd: list[float] = field(default_factory=list)
    fb: list[float] = field(default_factory=list)
    error: str = ""
    check: str = ""  # "" (not checked), or "max rel err ..." / "MISMATCH ..."


def _rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:200]


def time_shape(shape: Shape, methods: list[Method], args: argparse.Namespace) -> dict[str, Timing]:
    log = lambda msg: print(f"[time {shape.label}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    res = {m.name: Timing() for m in methods}
    x0, w0, gy0 = base_tensors(shape)
    cases: dict[str, Case] = {}
    grads: dict[str, Tensor] = {}
    for m in methods:
        try:
            cases[m.name] = Case(m, shape, x0, w0)
            grads[m.name] = gy0.clone(memory_format=memory_format(m.layout))
        except Exception as e:  # noqa: BLE001 - report and go on with the other methods
            res[m.name].error = _short(e)

    # warm-up, per-call estimate and a correctness check against a reference implementation
    estimate: dict[str, float] = {}
    ref: tuple[str, Tensor, Tensor, Tensor] | None = None
    for name in [n for n in CHECK_REFERENCES if n in cases] + [n for n in cases if n not in CHECK_REFERENCES]:
        case = cases[name]
        try:
            for i in range(max(1, args.warmup)):
                t0 = time.perf_counter()
                out = case.forward()
                t1 = time.perf_counter()
                case.zero_grad()
                t2 = time.perf_counter()
                case.forward_backward(grads[name])
                t3 = time.perf_counter()
                estimate[name] = min(estimate.get(name, float("inf")), (t1 - t0) + (t3 - t2))
                if i == 0 and case.method.kind != "dwconv":
                    gx, gw = case.grads()
                    if ref is None:
                        ref = (name, out.detach().clone(), gx.clone(), gw.clone())
                        res[name].check = "reference"
                    else:
                        errs = (_rel_err(out, ref[1]), _rel_err(gx, ref[2]), _rel_err(gw, ref[3]))
                        worst = max(errs)
                        tag = "ok" if worst <= args.tolerance else "MISMATCH"
                        res[name].check = (
                            f"{tag} vs {ref[0]}: max rel err out {errs[0]:.1e}, grad_in {errs[1]:.1e}, "
                            f"grad_w {errs[2]:.1e}"
                        )
                        if tag != "ok":
                            log(f"{name}: {res[name].check}")
                del out
                case.zero_grad()
                if (t1 - t0) + (t3 - t2) > 1.0:  # slow: one warm-up call is enough
                    break
        except Exception as e:  # noqa: BLE001
            res[name].error = _short(e)
            log(f"{name} failed: {res[name].error}")
            cases.pop(name)
    del ref

    # how many timed rounds each method gets: --repeats, fewer for slow methods (--budget seconds per method and
    # shape), at least --min-repeats. First guessed from the warm-up, then re-estimated from the timed medians.
    def n_rounds(seconds_per_round: float) -> int:
        if args.budget <= 0:
            return args.repeats
        return max(1, min(args.repeats, max(args.min_repeats, int(args.budget / max(seconds_per_round, 1e-9)))))

    rounds = {name: n_rounds(estimate[name]) for name in cases}
    order = list(cases)
    r = 0
    while active := [n for n in order if rounds[n] > r]:
        k = r % len(active)
        for name in active[k:] + active[:k]:  # rotate, so no method always runs right after the same one
            case, t = cases[name], res[name]
            try:
                t0 = time.perf_counter()
                out = case.forward()
                t1 = time.perf_counter()
                del out
                case.zero_grad()
                t2 = time.perf_counter()
                out = case.forward_backward(grads[name])
                t3 = time.perf_counter()
                del out
                case.zero_grad()
            except Exception as e:  # noqa: BLE001
                t.error = _short(e)
                rounds[name] = 0
                continue
            t.fwd.append(t1 - t0)
            t.fb.append(t3 - t2)
            rounds[name] = n_rounds(_util.median(t.fwd) + _util.median(t.fb))
        r += 1
    log(", ".join(f"{n}: {len(res[n].fwd)} runs" for n in order))
    return res


# ------------------------------------------------------------------------------------------------ memory
@dataclass
class Memory:
    peak_mib: float | None = None
    mode: str = ""
    error: str = ""


def child_main(spec: dict) -> int:
    """Run in a fresh process: build one method's inputs, measure one pass's peak extra RSS, print JSON."""
    reset_ok = _util.hwm_reset_works()
    try:
        torch.set_num_threads(spec["threads"])
        shape, method, pass_ = Shape(**spec["shape"]), METHODS[spec["method"]], spec["pass"]
        if method.backend is not None and method.backend not in available_backends():
            raise RuntimeError(f"backend {method.backend!r} unavailable: {backend_status().get(method.backend)}")
        x0, w0, _ = base_tensors(shape)
        case = Case(method, shape, x0, w0)
        del x0, w0

        def run() -> Tensor:
            if pass_ == "fwd":
                return case.forward()
            return case.forward_backward(None)  # the output gradient is allocated inside the measured pass

        if reset_ok:
            out = run()  # warm-up: lazy one-time allocations (thread pools, kernel caches) are not the op's
            del out
            case.zero_grad()
        gc.collect()
        if reset_ok:
            _util.reset_peak_rss()
        base = _util.proc_status_kib("VmRSS")["VmRSS"]
        out = run()
        peak = _util.proc_status_kib("VmHWM")["VmHWM"]
        del out
        result = {"peak_mib": (peak - base) / 1024, "mode": "hwm-reset" if reset_ok else "rss-baseline"}
    except Exception as e:  # noqa: BLE001
        result = {"error": _short(e)}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


def measure_memory(method: Method, shape: Shape, pass_: str, args: argparse.Namespace) -> Memory:
    spec = {"shape": asdict(shape), "method": method.name, "pass": pass_, "threads": args.threads}
    env = dict(os.environ)
    # a fixed mmap threshold (this also turns off glibc's dynamic threshold) and eager trimming: every buffer
    # >= 64 KiB is its own mapping, returned to the OS when freed, so RSS follows the live allocations
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072", MALLOC_TOP_PAD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return Memory(error=f"timed out after {args.child_timeout} s")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return Memory(error=f"child exited {p.returncode}: {tail[:200]}")
    d = json.loads(lines[-1])
    return Memory(peak_mib=d.get("peak_mib"), mode=d.get("mode", ""), error=d.get("error", ""))


# ------------------------------------------------------------------------------------------------ report
def machine_info(args: argparse.Namespace, command: str) -> list[tuple[str, str]]:
    status = backend_status()
    rev = _util.git_revision(ROOT)
    return [
        ("command", f"`{command}`"),
        ("involution", f"{involution.__version__}" + (f" (git {rev})" if rev else "")),
        ("torch", torch.__version__),
        ("python", sys.version.split()[0]),
        ("CPU", f"{_util.cpu_model()} ({_util.usable_cpus()} usable CPUs)"),
        ("threads", f"{torch.get_num_threads()} (torch.set_num_threads)"),
        ("load avg", _util.load_average() + " (1/5/15 min, at start)"),
        ("backends", ", ".join(f"{k}: {v}" for k, v in status.items())),
        ("dtype", "float32"),
    ]


def ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b > 0 else float("nan")


def build_tables(
    shapes: list[Shape],
    methods: list[Method],
    timings: dict[str, dict[str, Timing]],
    memory: dict[tuple[str, str, str], Memory],
    markdown: bool,
    show_memory: bool,
) -> str:
    med = _util.median
    f = _util.fmt_num
    time_rows, mem_rows = [], []
    for s in shapes:
        tm = timings[s.label]
        dw_f = {m: med(tm[m].fwd) if m in tm else float("nan") for m in REFERENCES}
        dw_fb = {m: med(tm[m].fb) if m in tm else float("nan") for m in REFERENCES}
        best_f = min((v for v in dw_f.values() if v == v), default=float("nan"))
        best_fb = min((v for v in dw_fb.values() if v == v), default=float("nan"))
        for m in methods:
            t = tm.get(m.name)
            if t is None:
                continue
            label = [s.label, m.name, m.layout_label]
            if not t.fwd:
                time_rows.append(label + [f"error: {t.error}" if t.error else "–"] + ["–"] * 6)
            else:
                fw, fb = med(t.fwd), med(t.fb)
                same = dw_f["dwconv:cl" if m.layout == "cl" else "dwconv:nchw"]
                noise = max(_util.rel_iqr(t.fwd), _util.rel_iqr(t.fb))
                time_rows.append(label + [
                    f(fw * 1e3), f(ratio(fw, same)), f(ratio(fw, best_f)),
                    f(fb * 1e3), f(ratio(fb, best_fb)), f(ratio(fb, fw)),
                    f"{len(t.fwd)}" + (f" (±{noise * 50:.0f}%)" if noise == noise else ""),
                ])
            if show_memory and any(key[0] == s.label for key in memory):
                cells = []
                for p in ("fwd", "fb"):
                    mem = memory.get((s.label, m.name, p))
                    need = needed_bytes(m, s, p) / MiB
                    if mem is None or mem.peak_mib is None:
                        cells += ["error" if mem is not None and mem.error else "–", f(need, 1)]
                    else:
                        cells += [f(mem.peak_mib, 1), f(need, 1)]
                mem_fb = memory.get((s.label, m.name, "fb"))
                pr = ratio(mem_fb.peak_mib, needed_bytes(m, s, "fb") / MiB) if mem_fb and mem_fb.peak_mib else None
                mem_rows.append(label + cells + [f(pr)])
    t_head = ["shape", "method", "layout", "fwd ms", "fwd ÷ dw same layout", "fwd ÷ dw best",
              "fwd+bwd ms", "fwd+bwd ÷ dw best", "fwd+bwd ÷ fwd", "runs (±IQR/2)"]
    out = [("**Time** (median)" if markdown else "TIME (median)"),
           "",
           _util.render_table(t_head, time_rows, markdown, [False] * 3 + [True] * 7)]
    if show_memory:
        m_head = ["shape", "method", "layout", "fwd peak MiB", "fwd needed MiB", "fwd+bwd peak MiB",
                  "fwd+bwd needed MiB", "fwd+bwd peak ÷ needed"]
        out += ["", ("**Peak extra memory**" if markdown else "PEAK EXTRA MEMORY"), "",
                _util.render_table(m_head, mem_rows, markdown, [False] * 3 + [True] * 5)]
    return "\n".join(out)


def notes(shapes: list[Shape], show_memory: bool, unavailable: dict[str, str]) -> list[str]:
    s0 = shapes[0]
    lines = [
        f"Shapes `CxH`: N={s0.n}, C channels, H=W={'/'.join(str(s.h) for s in shapes)}, G=C/{s0.c // s0.g}, "
        f"K={s0.k}, stride {s0.stride}, padding {s0.padding}, dilation {s0.dilation}, float32.",
        "`fwd` runs under `torch.no_grad()`; `fwd+bwd` is a forward with autograd, then `out.backward(grad)` "
        "w.r.t. input and weight. Times are medians over the interleaved runs; ±IQR/2 is half the interquartile "
        "range over the median (noise).",
        "`dw` = `nn.Conv2d(C, C, K, padding=K//2, groups=C, bias=False)`, the static-weight twin; "
        "'same layout' compares with dw in the method's layout, 'best' with dw's faster layout.",
        "`unfold` is the plain `F.unfold` formulation (materialises N*C*K*K*Ho*Wo floats: "
        + ", ".join(f"{s.label}: {4 * s.numel('unfolded') / MiB:.0f} MiB" for s in shapes) + ").",
        "channels_last rows use a channels_last input and a channels_last `(N, G*K*K, Ho, Wo)` weight viewed as "
        "6-D with `.unflatten(1, (G, K, K))`.",
    ]
    if show_memory:
        lines.append(
            "Peak extra memory: VmHWM increase over the RSS after the inputs exist, one fresh process per cell, "
            "after one warm-up pass (1 MiB = 2^20 bytes). 'needed' = bytes that must exist anyway: the output "
            "(fwd); output + its gradient + grad_input + grad_weight (fwd+bwd)."
        )
    for name, why in unavailable.items():
        lines.append(f"Backend `{name}` unavailable here ({why}): its rows are left out.")
    return lines


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default=None, help=f"comma list of CxH (H=W), default {DEFAULT_SHAPES}")
    p.add_argument("--batch", type=int, default=8, help="N (default 8)")
    p.add_argument("--group-channels", type=int, default=16, help="channels per group, G = C / this (default 16)")
    p.add_argument("--kernel", type=int, default=7, help="K (default 7); padding is K//2")
    p.add_argument("--methods", default="all",
                   help="comma list of " + ", ".join(METHODS) + "\nor families (unfold, torch, cpu, dwconv); "
                        "dwconv is always timed (ratios)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per method and shape (default 15)")
    p.add_argument("--min-repeats", type=int, default=3, help="at least this many, however slow (default 3)")
    p.add_argument("--budget", type=float, default=6.0,
                   help="seconds of timed runs per method and shape, fwd+bwd included; caps --repeats for slow\n"
                        "methods such as unfold (default 6; 0: no cap)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs (default 2; 1 for calls over 1 s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all usable CPUs)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements (subprocesses)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: N=2, shapes {QUICK_SHAPES}, 3 repeats, 1 warm-up, memory on the first shape only")
    p.add_argument("--markdown", metavar="PATH", default=None,
                   help="also write the report as markdown to PATH ('-': print it only)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative error of the correctness check")
    p.add_argument("--child-timeout", type=float, default=600, help=argparse.SUPPRESS)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child is not None:
        return child_main(json.loads(args._child))

    command = "python benchmarks/op.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    if args.threads is None:
        args.threads = _util.usable_cpus()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch = 2
        args.shapes = args.shapes or QUICK_SHAPES
        args.repeats, args.warmup = min(args.repeats, 3), 1
    shapes = parse_shapes(args.shapes or DEFAULT_SHAPES, args.batch, args.group_channels, args.kernel)
    methods = parse_methods(args.methods)

    available = set(available_backends())
    status = backend_status()
    unavailable = {m.backend: status.get(m.backend, "unavailable") for m in methods
                   if m.backend is not None and m.backend not in available}
    for name, why in unavailable.items():
        print(f"note: backend {name!r} is unavailable ({why}); skipping "
              + ", ".join(m.name for m in methods if m.backend == name), file=sys.stderr)
    methods = [m for m in methods if m.backend is None or m.backend in available]

    info = machine_info(args, command)
    for k, v in info:
        print(f"{k:>10}: {v.strip('`')}")
    print()

    t_start = time.perf_counter()
    timings: dict[str, dict[str, Timing]] = {}
    for s in shapes:
        timings[s.label] = time_shape(s, methods, args)

    memory: dict[tuple[str, str, str], Memory] = {}
    show_memory = not args.no_memory
    if show_memory and not _util.peak_rss_supported():
        print("note: /proc/self/status has no VmHWM here; skipping memory", file=sys.stderr)
        show_memory = False
    if show_memory:
        for s in shapes[:1] if args.quick else shapes:  # --quick: one shape is enough to exercise the children
            for m in methods:
                t = timings[s.label].get(m.name)
                if t is None or (t.error and not t.fwd):  # failed to run at all: its error is reported already
                    continue
                for pass_ in ("fwd", "fb"):
                    print(f"[memory {s.label}] {m.name} {pass_}", file=sys.stderr, flush=True)
                    memory[(s.label, m.name, pass_)] = measure_memory(m, s, pass_, args)
        modes = {mem.mode for mem in memory.values() if mem.mode}
        if "rss-baseline" in modes:
            print("note: could not reset VmHWM via /proc/self/clear_refs; memory = VmHWM - RSS after the inputs "
                  "were built, without a warm-up pass", file=sys.stderr)
    elapsed = time.perf_counter() - t_start

    # plain-text report
    print(build_tables(shapes, methods, timings, memory, markdown=False, show_memory=show_memory))
    checks = [(s.label, n, t.check) for s in shapes for n, t in timings[s.label].items() if t.check]
    errors = [(s.label, n, t.error) for s in shapes for n, t in timings[s.label].items() if t.error]
    errors += [(lbl, f"{n} {pa} memory", mem.error) for (lbl, n, pa), mem in memory.items() if mem.error]
    print()
    for lbl, n, c in checks:
        if c != "reference":
            print(f"check {lbl} {n}: {c}")
    for lbl, n, e in errors:
        print(f"error {lbl} {n}: {e}")
    if unavailable:
        print("unavailable: " + ", ".join(f"{k} ({v})" for k, v in unavailable.items()))
    print(f"done in {elapsed:.0f} s")

    if args.markdown:
        md = ["### involution2d operator, CPU", ""]
        md += [f"- {k}: {v}" for k, v in info]
        md += ["", build_tables(shapes, methods, timings, memory, markdown=True, show_memory=show_memory), ""]
        md += [f"- {line}" for line in notes(shapes, show_memory, unavailable)]
        bad = [f"{lbl} {n}: {c}" for lbl, n, c in checks if c.startswith("MISMATCH")]
        bad += [f"{lbl} {n}: {e}" for lbl, n, e in errors]
        md += [f"- **{line}**" for line in bad]
        text = "\n".join(md) + "\n"
        if args.markdown != "-":
            os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
            with open(args.markdown, "w") as fh:
                fh.write(text)
            print(f"\nmarkdown written to {args.markdown}:\n")
        else:
            print()
        print(text, end="")
    mismatches = [c for _, _, c in checks if c.startswith("MISMATCH")]
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
