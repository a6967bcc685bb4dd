#!/usr/bin/env python
"""End-to-end benchmark on the CPU: RedNet-26/50/101 against the ResNet-26/50/101 baselines, side by side.

Both families are treated alike: the same memory layout (``--layouts``, default both NCHW and channels_last, one
after the other: the model and the inputs), the same threads (``--threads``), eager by default or both
``torch.compile``-d (``--compile``), the same inputs, the same optimizer. Measured per model and layout:

* inference latency at batch 1 and batch ``--batch`` (8), ``--size`` (224) square images: ``model.eval()``, the
  forward under ``torch.inference_mode()``; as built, and with every BatchNorm that follows a convolution folded
  into it (``model.fuse()``, both families; ``infer fused``);
* a training step at batch ``--batch``: ``model.train()``, ``optimizer.zero_grad(set_to_none=True)``, forward,
  cross-entropy loss (random labels), backward, ``SGD(lr=0.01, momentum=0.9).step()``;
* peak extra memory (MiB) of the batch-8 inference and of the training step, with and without grad checkpointing
  (``model.set_grad_checkpointing(True)``: every residual block is recomputed in the backward; both families
  support it), each in a fresh child process per model (``--_child``).

Timing runs in this process, one pair (RedNet-D, ResNet-D) at a time: after a warm-up (which also absorbs the
compilation with ``--compile``), each round times every model of the pair once, the order alternating from round
to round, so machine noise hits both alike. Medians are reported, with the ratio RedNet / ResNet.

Peak memory, as in benchmarks/op.py, in one fresh child process per model: the child builds the model (and its
optimizer); then for each pass in turn (inference, training step, training step with checkpointing) it runs the pass
once as warm-up (so the optimizer's momentum buffers and one-time caches already exist), frees the gradients, resets
the RSS high-water mark (``echo 5 > /proc/self/clear_refs``), runs the pass again and reports VmHWM minus the RSS at
the reset: activations, gradients and temporaries, not the weights or the optimizer state. The child runs with
glibc's mmap threshold fixed at 64 KiB and trimming on, so freed buffers go back to the OS and what an earlier pass
freed cannot hide a later pass's allocations.

Targets (pass/fail columns, computed for every pair; they are defined for RedNet-50 vs ResNet-50, in each
layout): inference at batch 1 and 8 <= 0.9x ResNet's time as built, <= 0.8x with both folded; training step
<= 1.0x; training peak memory (no checkpointing) <= ResNet's.

Usage::

    python benchmarks/models.py                       # full run: pairs 26, 50, 101 at 224x224, both layouts (~40 min)
    python benchmarks/models.py --quick               # smoke test (~30 s): rednet26 vs resnet26, 64x64, batch 2
    python benchmarks/models.py --models 50 --repeats 5 --no-memory
    python benchmarks/models.py --layouts nchw --compile  # compiling takes minutes per model and pass kind
    python benchmarks/models.py --markdown docs/benchmarks_models.md   # also write a markdown section
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import _util  # first: it puts this checkout's src/ on sys.path (the script's folder is already there)

ROOT = _util.ROOT
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

import involution  # noqa: E402
from involution.ops import available_backends, backend_status, use_backend  # noqa: E402

MiB = 1 << 20
DEFAULT_MODELS = "26,50,101"
TARGET_PAIR = "50"
TARGETS = {"infer": 0.9, "infer_fused": 0.8, "train": 1.0, "mem": 1.0}  # max ratio RedNet / ResNet
LR, MOMENTUM = 0.01, 0.9


# ------------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Pair:
    tag: str  # "50", "26_small", or "a:b"
    red: str
    res: str

    @property
    def names(self) -> tuple[str, str]:
        return (self.red, self.res)


def parse_pairs(spec: str) -> list[Pair]:
    """Comma list of depths ("26,50,101", "26_small") or of explicit pairs "rednet50:resnet50"."""
    known = set(involution.list_models())
    pairs = []
    for tok in spec.split(","):
        tok = tok.strip().lower()
        if not tok:
            continue
        if ":" in tok:
            red, res = (s.strip() for s in tok.split(":", 1))
        else:
            red, res = f"rednet{tok}", f"resnet{tok}"
        for n in (red, res):
            if n not in known:
                raise SystemExit(f"--models: unknown model {n!r} (from {tok!r}); known: {', '.join(sorted(known))}")
        pairs.append(Pair(tok, red, res))
    if not pairs:
        raise SystemExit("--models: no pair given")
    return pairs


def memory_format(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def backend_ctx(backend: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if backend == "auto" else use_backend(backend)


def make_inputs(batch: int, size: int, layout: str, num_classes: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed + batch)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=memory_format(layout))
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return x, y


class Runner:
    """One model, its (compiled) callable and its optimizer; ``prepare(kind)`` outside the timer, ``run(kind)``."""

    def __init__(self, name: str, layout: str, compile_: bool, checkpointing: bool = False) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = involution.create_model(name).to(memory_format=memory_format(layout))
        self.model.set_grad_checkpointing(checkpointing)
        self.fn: Callable[[Tensor], Tensor] = torch.compile(self.model, dynamic=False) if compile_ else self.model
        self.compile = compile_
        self.fused_fn: Callable[[Tensor], Tensor] | None = None  # built by prepare('infer_fused')
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.last_loss = float("nan")

    def prepare(self, kind: str) -> None:
        """Set the mode (and checkpointing) for ``kind`` ('infer', 'infer_fused', 'train' or 'train_ckpt'); not
        timed."""
        if kind == "infer_fused":
            if self.fused_fn is None:  # a folded copy, made before any training step: the model itself trains on
                fused = copy.deepcopy(self.model).eval().fuse()
                self.fused_fn = torch.compile(fused, dynamic=False) if self.compile else fused
            return
        self.model.train(kind != "infer")
        if kind != "infer":
            self.model.set_grad_checkpointing(kind == "train_ckpt")

    def infer(self, x: Tensor, fused: bool = False) -> Tensor:
        with torch.inference_mode():
            return (self.fused_fn if fused else self.fn)(x)

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        out = self.fn(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run(self, kind: str, x: Tensor, y: Tensor) -> Tensor:
        if kind.startswith("infer"):
            return self.infer(x, fused=kind == "infer_fused")
        return self.train_step(x, y)


def param_count(name: str) -> int:
    m = involution.create_model(name)
    return sum(p.numel() for p in m.parameters())


def gmacs(name: str, size: int) -> float:
    """Multiply-adds of one forward at batch 1 (the paper's 'FLOPs'), in G; nan if the count fails."""
    try:
        from involution.models import count_flops

        return count_flops(name, (1, 3, size, size)).macs / 1e9
    except Exception:  # noqa: BLE001 - informative column only
        return float("nan")


# ------------------------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Kind:
    key: str  # "infer_b1", "infer_b8", "train_b8", "train_ckpt_b8"
    kind: str  # "infer" | "infer_fused" | "train" | "train_ckpt"
    batch: int

    @property
    def label(self) -> str:
        labels = {"infer": "infer", "infer_fused": "infer fused", "train": "train", "train_ckpt": "train+ckpt"}
        return labels[self.kind] + f" b{self.batch}"


def kinds_for(args: argparse.Namespace) -> list[Kind]:
    out = [Kind(f"infer_b{b}", "infer", b) for b in dict.fromkeys((1, args.batch))]
    out += [Kind(f"infer_fused_b{b}", "infer_fused", b) for b in dict.fromkeys((1, args.batch))]
    out.append(Kind(f"train_b{args.batch}", "train", args.batch))
    if args.time_checkpointing:
        out.append(Kind(f"train_ckpt_b{args.batch}", "train_ckpt", args.batch))
    return out


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    error: str = ""


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:200]


def time_pair(pair: Pair, kinds: list[Kind], args: argparse.Namespace) -> dict[str, dict[str, Cell]]:
    """{model name: {kind key: Cell}} for the two models of ``pair``, interleaved round-robin per kind."""
    log = lambda msg: print(f"[time {pair.tag}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    res: dict[str, dict[str, Cell]] = {n: {k.key: Cell() for k in kinds} for n in pair.names}
    runners: dict[str, Runner] = {}
    for n in pair.names:
        try:
            runners[n] = Runner(n, args.layout, args.compile)
        except Exception as e:  # noqa: BLE001 - report and go on
            for c in res[n].values():
                c.error = _short(e)
            log(f"{n}: building failed: {c.error}")
    with backend_ctx(args.backend):
        for k in kinds:
            x, y = make_inputs(k.batch, args.size, args.layout)
            active = list(runners)
            t_warm = time.perf_counter()
            for n in list(active):
                r = runners[n]
                try:
                    for _ in range(args.warmup):
                        r.prepare(k.kind)
                        out = r.run(k.kind, x, y)
                    if not k.kind.startswith("infer"):
                        r.last_loss = float(out)
                    del out
                except Exception as e:  # noqa: BLE001
                    res[n][k.key].error = _short(e)
                    log(f"{n} {k.label}: {res[n][k.key].error}")
                    active.remove(n)
            log(f"{k.label}: warm-up {time.perf_counter() - t_warm:.1f} s")
            for rnd in range(args.repeats):
                order = active if rnd % 2 == 0 else active[::-1]
                for n in order:
                    r, cell = runners[n], res[n][k.key]
                    if cell.error:
                        continue
                    try:
                        r.prepare(k.kind)
                        gc.collect()
                        t0 = time.perf_counter()
                        out = r.run(k.kind, x, y)
                        t1 = time.perf_counter()
                        del out
                    except Exception as e:  # noqa: BLE001
                        cell.error = _short(e)
                        continue
                    cell.times.append(t1 - t0)
            log(k.label + ": " + ", ".join(f"{n} {_util.median(res[n][k.key].times) * 1e3:.0f} ms" for n in active))
    for n, r in runners.items():
        if r.last_loss != r.last_loss or r.last_loss in (float("inf"), float("-inf")):
            log(f"warning: {n}: non-finite training loss ({r.last_loss}); timings may not be representative")
    del runners
    gc.collect()
    return res


# ------------------------------------------------------------------------------------------------ memory
@dataclass
class Memory:
    peak_mib: float | None = None
    base_mib: float | None = None
    mode: str = ""
    error: str = ""


MEMORY_KINDS = ("infer", "train", "train_ckpt")


def child_main(spec: dict) -> int:
    """Run in a fresh process: build one model, measure the peak extra RSS of each pass in turn, print JSON.

    One process per model: each pass gets its own warm-up and its own high-water-mark reset, so what an earlier
    pass left behind (caches, the optimizer's momentum buffers) is part of the baseline, not of the peak.
    """
    reset_ok = _util.hwm_reset_works()
    results: dict[str, dict] = {}
    try:
        torch.set_num_threads(spec["threads"])
        x, y = make_inputs(spec["batch"], spec["size"], spec["layout"])
        with backend_ctx(spec["backend"]):
            r = Runner(spec["model"], spec["layout"], spec["compile"])
            for kind in spec["kinds"]:
                try:
                    r.prepare(kind)
                    if reset_ok:
                        out = r.run(kind, x, y)  # warm-up: momentum buffers, thread pools, caches, compilation
                        del out
                    r.opt.zero_grad(set_to_none=True)  # the gradients are allocated inside the measured pass
                    gc.collect()
                    if reset_ok:
                        _util.reset_peak_rss()
                    base = _util.proc_status_kib("VmRSS")["VmRSS"]
                    out = r.run(kind, x, y)
                    peak = _util.proc_status_kib("VmHWM")["VmHWM"]
                    del out
                    r.opt.zero_grad(set_to_none=True)
                    results[kind] = {"peak_mib": (peak - base) / 1024, "base_mib": base / 1024,
                                     "mode": "hwm-reset" if reset_ok else "rss-baseline"}
                except Exception as e:  # noqa: BLE001 - report, go on with the next pass
                    results[kind] = {"error": _short(e)}
                if not reset_ok:
                    break  # without a reset the high-water mark of this pass would hide the next ones
    except Exception as e:  # noqa: BLE001
        results = {kind: {"error": _short(e)} for kind in spec["kinds"]}
    print(json.dumps(results), flush=True)
    return 0 if all("error" not in v for v in results.values()) else 1


def measure_memory(model: str, args: argparse.Namespace) -> dict[str, Memory]:
    """{kind: Memory} for every kind of MEMORY_KINDS, measured in one fresh child process."""
    spec = {"model": model, "kinds": list(MEMORY_KINDS), "batch": args.batch, "size": args.size,
            "layout": args.layout, "compile": args.compile, "threads": args.threads, "backend": args.backend}
    env = dict(os.environ)
    # a fixed mmap threshold (this also turns off glibc's dynamic threshold) and eager trimming: every buffer
    # >= 64 KiB is its own mapping, returned to the OS when freed, so RSS follows the live allocations
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072", MALLOC_TOP_PAD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {k: Memory(error=f"timed out after {args.child_timeout:.0f} s") for k in MEMORY_KINDS}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {k: Memory(error=f"child exited {p.returncode}: {tail[:200]}") for k in MEMORY_KINDS}
    d = json.loads(lines[-1])
    out = {}
    for k in MEMORY_KINDS:
        v = d.get(k)
        if v is None:
            out[k] = Memory(error="not measured (VmHWM cannot be reset here: one pass per process)")
        else:
            out[k] = Memory(peak_mib=v.get("peak_mib"), base_mib=v.get("base_mib"), mode=v.get("mode", ""),
                            error=v.get("error", ""))
    return out


# ------------------------------------------------------------------------------------------------ report
def involution_backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    avail = available_backends()
    first = next((b for b in ("cpu", "torch") if b in avail), "?")
    return f"auto ({first} on the CPU)"


def machine_info(args: argparse.Namespace, command: str) -> list[tuple[str, str]]:
    rev = _util.git_revision(ROOT)
    return [
        ("command", f"`{command}`"),
        ("involution", f"{involution.__version__}" + (f" (git {rev})" if rev else "")),
        ("torch", torch.__version__),
        ("python", sys.version.split()[0]),
        ("CPU", f"{_util.cpu_model()} ({_util.usable_cpus()} usable CPUs)"),
        ("threads", f"{torch.get_num_threads()} (torch.set_num_threads)"),
        ("load avg", _util.load_average() + " (1/5/15 min, at start)"),
        ("backend", "involution " + involution_backend(args) + "; " + ", ".join(
            f"{k}: {v}" for k, v in backend_status().items())),
        ("setup", f"{args.size}x{args.size}, batch 1 and {args.batch}, float32, "
                  f"{'channels_last' if args.layout == 'channels_last' else 'NCHW'}, "
                  f"{'torch.compile (dynamic=False)' if args.compile else 'eager'}, "
                  f"{args.repeats} timed runs after {args.warmup} warm-up"),
    ]


def ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or a != a or b != b or b <= 0:
        return float("nan")
    return a / b


def verdict(r: float, limit: float) -> str:
    if r != r:
        return "–"
    return f"{'PASS' if r <= limit else 'FAIL'} ({r:.2f}x)"


def build_tables(
    pairs: list[Pair],
    kinds: list[Kind],
    timings: dict[str, dict[str, Cell]],
    memory: dict[tuple[str, str], Memory],
    info: dict[str, tuple[float, float]],
    args: argparse.Namespace,
    markdown: bool,
) -> str:
    med, f = _util.median, _util.fmt_num
    show_memory = bool(memory)
    b = args.batch

    def t_ms(name: str, key: str) -> float:
        c = timings.get(name, {}).get(key)
        return med(c.times) * 1e3 if c and c.times else float("nan")

    def mem(name: str, kind: str) -> float | None:
        m = memory.get((name, kind))
        return m.peak_mib if m else None

    # per model
    rows = []
    for p in pairs:
        for n in p.names:
            params, macs = info.get(n, (float("nan"), float("nan")))
            cells = [p.tag, n, f(params / 1e6, 1), f(macs)]
            for k in kinds:
                c = timings.get(n, {}).get(k.key)
                cells.append("error" if c and c.error and not c.times else f(t_ms(n, k.key), 1))
            noise = max((_util.rel_iqr(c.times) for c in timings.get(n, {}).values() if c.times),
                        default=float("nan"))
            nruns = min((len(c.times) for c in timings.get(n, {}).values()), default=0)
            cells.append(f"{nruns}" + (f" (±{noise * 50:.0f}%)" if noise == noise else ""))
            if show_memory:
                for kind in MEMORY_KINDS:
                    m = memory.get((n, kind))
                    cells.append("error" if m and m.error else f(mem(n, kind), 0))
            rows.append(cells)
    head = ["pair", "model", "params M", "GMACs/img"] + [f"{k.label} ms" for k in kinds] + ["runs (±IQR/2)"]
    if show_memory:
        head += [f"infer b{b} MiB", f"train b{b} MiB", f"train+ckpt b{b} MiB"]
    out = [("**Per model** (median time; peak extra memory)" if markdown else "PER MODEL (median time; peak extra "
            "memory)"), "", _util.render_table(head, rows, markdown, [False, False] + [True] * (len(head) - 2))]

    # per pair: ratios RedNet / ResNet and the targets
    rrows = []
    for p in pairs:
        cells = [p.tag, f"{p.red} / {p.res}"]
        for k in kinds:
            cells.append(f(ratio(t_ms(p.red, k.key), t_ms(p.res, k.key))) + "x")
        if show_memory:
            for kind in MEMORY_KINDS:
                cells.append(f(ratio(mem(p.red, kind), mem(p.res, kind))) + "x")
            cells.append(f(ratio(mem(p.red, "train_ckpt"), mem(p.red, "train"))) + "x")
        for k in kinds:
            if k.kind in TARGETS:
                cells.append(verdict(ratio(t_ms(p.red, k.key), t_ms(p.res, k.key)), TARGETS[k.kind]))
        if show_memory:
            cells.append(verdict(ratio(mem(p.red, "train"), mem(p.res, "train")), TARGETS["mem"]))
        rrows.append(cells)
    rhead = ["pair", "RedNet / ResNet"] + [f"{k.label} time" for k in kinds]
    if show_memory:
        rhead += [f"infer b{b} mem", f"train b{b} mem", f"train+ckpt b{b} mem", "RedNet ckpt ÷ no ckpt mem"]
    rhead += [f"target: {k.label} ≤{TARGETS[k.kind]:.1f}x" for k in kinds if k.kind in TARGETS]
    if show_memory:
        rhead.append(f"target: train mem ≤{TARGETS['mem']:.1f}x")
    out += ["", ("**RedNet / ResNet** (ratios of the medians; < 1: RedNet is faster / smaller)" if markdown
                 else "REDNET / RESNET (ratios of the medians; < 1: RedNet is faster / smaller)"), "",
            _util.render_table(rhead, rrows, markdown, [False, False] + [True] * (len(rhead) - 2))]
    return "\n".join(out)


def notes(args: argparse.Namespace, show_memory: bool) -> list[str]:
    b = args.batch
    lines = [
        f"`infer b1`, `infer b{b}`: `model.eval()`, forward under `torch.inference_mode()`. `train b{b}`: "
        f"`model.train()`, `zero_grad(set_to_none=True)`, forward, cross-entropy (random labels), backward, "
        f"`SGD(lr={LR}, momentum={MOMENTUM}).step()`. `GMACs/img`: multiply-adds of one forward at batch 1 "
        f"(`involution.models.count_flops`, the paper's 'FLOPs').",
        "Timing: per pair, after the warm-up, each round times both models once, alternating which goes first; "
        "medians over the rounds. ±IQR/2 is the largest (over the columns) half interquartile range over the "
        "median (noise).",
        f"Targets (defined for pair {TARGET_PAIR}, shown for every pair): RedNet inference ≤ "
        f"{TARGETS['infer']:.1f}x ResNet's time as built and ≤ {TARGETS['infer_fused']:.1f}x with both folded "
        f"(`infer fused`: `model.fuse()`), training step ≤ {TARGETS['train']:.1f}x, training peak memory "
        f"(no checkpointing) ≤ {TARGETS['mem']:.1f}x.",
    ]
    if show_memory:
        lines.append(
            "Peak extra memory: VmHWM increase over the RSS just before the pass (VmHWM reset via "
            "`/proc/self/clear_refs`), one fresh process per model, each pass after its own warm-up pass, gradients "
            "freed before the measured pass (so it counts activations, gradients and "
            "temporaries, not weights or optimizer state; 1 MiB = 2^20 bytes). `train+ckpt`: the same step with "
            "`model.set_grad_checkpointing(True)` (each residual block recomputed in the backward)."
        )
    if args.compile:
        lines.append("`--compile`: both models `torch.compile(model, dynamic=False)`; the warm-up absorbs "
                     "compilation (and the recompilation between eval/train and batch sizes).")
    return lines


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma list of depths, each a pair rednetD / resnetD (default {DEFAULT_MODELS});\n"
                        "'26_small' or an explicit 'rednet50:resnet50' work too")
    p.add_argument("--size", type=int, default=None, help="image height = width (default 224)")
    p.add_argument("--batch", type=int, default=None, help="batch of the second inference and of training (default 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per model and measurement (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per model and measurement (default 2; "
                                                            "3 with --compile)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all usable CPUs)")
    p.add_argument("--layouts", default="nchw,channels_last",
                   help="comma list of memory layouts of models and inputs, each timed in turn (nchw, channels_last;\n"
                        "default both)")
    p.add_argument("--compile", action="store_true", help="torch.compile both families (default: eager)")
    p.add_argument("--backend", choices=("auto", "cpu", "torch"), default="auto",
                   help="involution backend for the RedNets (default auto: the fastest available)")
    p.add_argument("--time-checkpointing", action="store_true",
                   help="also time the training step with grad checkpointing on")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements (subprocesses)")
    p.add_argument("--memory-jobs", type=int, default=None,
                   help="memory child processes run at once (default 1; 2 with --quick); a peak is per process,\n"
                        "so this only changes the wall time")
    p.add_argument("--quick", action="store_true",
                   help="smoke test (< 1 min on an idle machine): rednet26 vs resnet26, 64x64, batch 2,\n"
                        "2 repeats, 1 warm-up, 2 memory children at once")
    p.add_argument("--markdown", metavar="PATH", default=None,
                   help="also write the report as markdown to PATH ('-': print it only)")
    p.add_argument("--child-timeout", type=float, default=900, help=argparse.SUPPRESS)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.layout = "channels_last"  # set per layout below; the child gets its own in the spec
    if args._child is not None:
        return child_main(json.loads(args._child))

    command = "python benchmarks/models.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    if args.quick:
        args.models = args.models or "26"
        args.size = args.size or 64
        args.batch = args.batch or 2
        args.repeats = args.repeats or 2
        args.warmup = args.warmup or 1
        args.memory_jobs = args.memory_jobs or 2
    args.memory_jobs = args.memory_jobs or 1
    args.models = args.models or DEFAULT_MODELS
    args.size = args.size or 224
    args.batch = args.batch or 8
    args.repeats = args.repeats or 10
    args.warmup = args.warmup or (3 if args.compile else 2)
    if min(args.size, args.batch, args.repeats, args.warmup) < 1:
        raise SystemExit("--size, --batch, --repeats and --warmup must be >= 1")
    if args.threads is None:
        args.threads = _util.usable_cpus()
    torch.set_num_threads(args.threads)
    if args.backend != "auto" and args.backend not in available_backends():
        raise SystemExit(f"--backend {args.backend}: unavailable here ({backend_status().get(args.backend)})")
    pairs = parse_pairs(args.models)
    kinds = kinds_for(args)
    layouts = parse_layouts(args.layouts)

    args.layout = layouts[0]
    info_lines = machine_info(args, command)
    for k, v in info_lines:
        print(f"{k:>10}: {v.strip('`')}")
    print()
    load = _util.load_average().split()
    if load and float(load[0]) > 0.5 * _util.usable_cpus():
        print(f"warning: 1-min load average {load[0]} on {_util.usable_cpus()} usable CPUs: other work competes for "
              "the cores, so the timings will be noisy (the ratios less so: both models share the noise)",
              file=sys.stderr)

    t_start = time.perf_counter()
    model_info = {n: (float(param_count(n)), gmacs(n, args.size)) for p_ in pairs for n in p_.names}
    show_memory = not args.no_memory
    if show_memory and not _util.peak_rss_supported():
        print("note: /proc/self/status has no VmHWM here; skipping memory", file=sys.stderr)
        show_memory = False
    sections: list[tuple[str, Callable[[bool], str]]] = []
    errors: list[tuple[str, str, str]] = []
    for layout in layouts:
        args.layout = layout
        timings: dict[str, dict[str, Cell]] = {}
        for pair in pairs:
            timings.update(time_pair(pair, kinds, args))
        memory = measure_all_memory(pairs, args) if show_memory else {}
        title = "NCHW" if layout == "nchw" else "channels_last"
        sections.append((title, lambda md, t=timings, m=memory: build_tables(pairs, kinds, t, m, model_info, args,
                                                                             markdown=md)))
        errors += [(n, f"{title} {k}", c.error) for n, d in timings.items() for k, c in d.items() if c.error]
        errors += [(n, f"{title} {k} memory", m.error) for (n, k), m in memory.items() if m.error]
    elapsed = time.perf_counter() - t_start

    for title, table in sections:
        print(f"=== {title} (both models and inputs) ===\n{table(False)}\n")
    for n, k, e in errors:
        print(f"error {n} {k}: {e}")
    load_end = _util.load_average()
    print(f"load avg at the end: {load_end}")
    print(f"done in {elapsed:.0f} s")

    if args.markdown:
        md = ["### RedNet vs ResNet, end to end, CPU", ""]
        md += [f"- {k}: {v}" for k, v in info_lines if k != "setup"]
        md += [f"- setup: {args.size}x{args.size}, batch 1 and {args.batch}, float32, "
               f"{'torch.compile (dynamic=False)' if args.compile else 'eager'}, {args.repeats} timed runs after "
               f"{args.warmup} warm-up; layouts in turn: {', '.join(t for t, _ in sections)}"]
        md += [f"- load avg at the end: {load_end}; run time {elapsed:.0f} s"]
        for title, table in sections:
            md += ["", f"#### {title} (both models and inputs)", "", table(True)]
        md += [""] + [f"- {line}" for line in notes(args, show_memory)]
        md += [f"- **error {n} {k}: {e}**" for n, k, e in errors]
        text = "\n".join(md) + "\n"
        if args.markdown != "-":
            os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
            with open(args.markdown, "w") as fh:
                fh.write(text)
            print(f"\nmarkdown written to {args.markdown}:\n")
        else:
            print()
        print(text, end="")
    return 1 if errors else 0


def parse_layouts(spec: str) -> list[str]:
    names = {"nchw": "nchw", "channels_last": "channels_last", "cl": "channels_last"}
    layouts = [names.get(tok.strip().lower()) for tok in spec.split(",") if tok.strip()]
    if not layouts or None in layouts:
        raise SystemExit(f"--layouts: give a comma list of nchw, channels_last; got {spec!r}")
    return list(dict.fromkeys(layouts))


def measure_all_memory(pairs: list[Pair], args: argparse.Namespace) -> dict[tuple[str, str], Memory]:
    """Peak memory of every model of ``pairs`` in ``args.layout``, one child process each."""
    memory: dict[tuple[str, str], Memory] = {}

    def one(pair: Pair, n: str) -> None:
        t0 = time.perf_counter()
        got = measure_memory(n, args)
        memory.update({(n, kind): m for kind, m in got.items()})
        print(f"[memory {pair.tag} {args.layout}] {n}: "
              + ", ".join(f"{k} " + (f"{m.peak_mib:.0f} MiB" if m.peak_mib is not None else m.error)
                          for k, m in got.items())
              + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    jobs = [(pair, n) for pair in pairs for n in pair.names]
    # children run one at a time by default; a peak (VmHWM) is per process, so --memory-jobs > 1 only saves
    # wall time (--quick: 2, where the children are mostly interpreter start-up)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.memory_jobs)) as pool:
        list(pool.map(lambda job: one(*job), jobs))
    if any(m.mode == "rss-baseline" for m in memory.values()):
        print("note: could not reset VmHWM via /proc/self/clear_refs; memory = VmHWM - RSS after the model "
              "was built, without a warm-up pass (inference only)", file=sys.stderr)
    return memory

if __name__ == "__main__":
    sys.exit(main())
