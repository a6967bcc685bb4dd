#!/usr/bin/env python
"""GPU benchmark of the involution op (Triton kernels) and of RedNet-50 against ResNet-50 training.

Operator, at the involution layers of RedNet-50 (batch ``--batch`` 32, C = 64/128/256/512 at 56/28/14/7, G = C/16,
K = 7, stride 1, padding 3), for float32, float16 and bfloat16, per layout (channels_last, NCHW):

* ``unfold``  the ``F.unfold`` formulation of the official code (``unfold_involution2d`` of benchmarks/op.py);
* ``triton``  ``involution2d`` on the ``"triton"`` backend; in channels_last the weight is a channels_last
  ``(N, G*K*K, Ho, Wo)`` tensor viewed as 6-D, as the kernel generator produces it;
* ``dwconv``  a depthwise 7x7 ``nn.Conv2d`` (cuDNN), the static-weight twin.

Times are medians of CUDA-event timings after a warm-up that also absorbs Triton's autotuning. "fwd" runs under
``torch.no_grad()``; "fwd+bwd" is a forward with autograd on and ``out.backward(grad)`` into the input and the
weight. Achieved bandwidth counts only the bytes that must move: input, weight and output (forward), plus their
three gradients (fwd+bwd), over the time; it is compared with a measured device-to-device copy (read + write).

Models: training throughput (images/s) of ``create_model("rednet50")`` and ``create_model("resnet50")``,
channels_last, AMP (``--amp-dtype``, bfloat16 by default; float16 adds a GradScaler), SGD with momentum,
``--model-batch`` 64 at 224x224, eager and ``torch.compile``.

Usage::

    python benchmarks/gpu.py                         # everything (a few minutes on an H100)
    python benchmarks/gpu.py --no-models --dtypes float16
    python benchmarks/gpu.py --out docs/gpu_benchmark.md   # also write the markdown tables to a file
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from op import ROOT, unfold_involution2d  # op.py also puts this checkout's src/ on sys.path

import _util  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import involution  # noqa: E402
from involution.ops import backend_status, use_backend  # noqa: E402

STAGES = "64x56,128x28,256x14,512x7"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
METHODS = ("unfold", "triton", "dwconv")
GB = 1e9


# ------------------------------------------------------------------------------------------------ timing
def cuda_times(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Milliseconds per call of ``fn``, one CUDA-event pair per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read and the bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _util.median(cuda_times(lambda: dst.copy_(src), repeats, warmup=3))
    return 2 * nbytes / (ms / 1e3) / GB


# ------------------------------------------------------------------------------------------------ operator
@dataclass(frozen=True)
class Stage:
    n: int
    c: int
    hw: int
    k: int = 7
    group_channels: int = 16

    @property
    def g(self) -> int:
        return self.c // self.group_channels

    @property
    def label(self) -> str:
        return f"{self.c}x{self.hw}"

    def must_move(self, dtype: torch.dtype, backward: bool) -> int:
        """Bytes of input, weight and output (and, with ``backward``, of their gradients)."""
        feat = self.n * self.c * self.hw * self.hw
        weight = self.n * self.g * self.k * self.k * self.hw * self.hw
        elem = torch.empty((), dtype=dtype).element_size()
        return (2 * feat + weight) * elem * (2 if backward else 1)


def make_tensors(stage: Stage, dtype: torch.dtype, layout: str) -> tuple[Tensor, Tensor, Tensor]:
    """(input, involution weight, depthwise conv weight) on the GPU, the first two laid out for ``layout``."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, c, g, k, hw = stage.n, stage.c, stage.g, stage.k, stage.hw
    x = torch.randn(n, c, hw, hw, device="cuda", generator=gen, dtype=dtype)
    w4 = torch.randn(n, g * k * k, hw, hw, device="cuda", generator=gen, dtype=dtype) / k
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w4 = w4.contiguous(memory_format=torch.channels_last)  # the generator's own layout: no copy on the way
    conv_w = torch.randn(c, 1, k, k, device="cuda", generator=gen, dtype=dtype) / k
    return x, w4, conv_w


def method_fn(method: str, stage: Stage, conv_w: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(x, w4) -> out`` for one method (the depthwise conv ignores ``w4`` and uses its static weight)."""
    pad = stage.k // 2
    if method == "dwconv":
        return lambda x, w4: F.conv2d(x, conv_w, padding=pad, groups=stage.c)
    unflat = (stage.g, stage.k, stage.k)
    if method == "unfold":
        return lambda x, w4: unfold_involution2d(x, w4.unflatten(1, unflat), 1, pad, 1)
    return lambda x, w4: involution.involution2d(x, w4.unflatten(1, unflat), 1, pad, 1)


def time_method(method: str, stage: Stage, dtype: torch.dtype, layout: str, args: argparse.Namespace) -> dict:
    """{'fwd': ms, 'fwdbwd': ms} (or 'error') for one method at one stage, dtype and layout."""
    x, w4, conv_w = make_tensors(stage, dtype, layout)
    xg, wg, cw = (t.detach().requires_grad_() for t in (x, w4, conv_w))
    fn, bwd_fn = method_fn(method, stage, conv_w), method_fn(method, stage, cw)
    # the backward runs on the backend chosen when it runs, so the whole call sits inside the choice
    backend = (lambda: use_backend("triton")) if method == "triton" else contextlib.nullcontext
    with torch.no_grad(), backend():
        grad = torch.randn_like(fn(x, w4))

    def fwd() -> None:
        with torch.no_grad(), backend():
            fn(x, w4)

    def fwd_bwd() -> None:
        xg.grad = wg.grad = cw.grad = None
        with backend():
            bwd_fn(xg, wg).backward(grad)

    res: dict = {}
    try:
        t0 = time.perf_counter()
        fwd_bwd()  # the first calls autotune the Triton kernels
        res["first_call_s"] = round(time.perf_counter() - t0, 2)
        res["fwd"] = _util.median(cuda_times(fwd, args.repeats, args.warmup))
        res["fwdbwd"] = _util.median(cuda_times(fwd_bwd, args.repeats, args.warmup))
    except torch.OutOfMemoryError:  # the unfold formulation at batch 32 may not fit
        res["error"] = "OOM"
    return res


def check_triton(stage: Stage, layout: str) -> float:
    """Max relative error of the Triton forward against the unfold formulation in float64 (at batch 2)."""
    small = Stage(2, stage.c, stage.hw, stage.k, stage.group_channels)
    x, w4, conv_w = make_tensors(small, torch.float32, layout)
    with use_backend("triton"):
        got = method_fn("triton", small, conv_w)(x, w4).double()
    ref = method_fn("unfold", small, conv_w)(x.double(), w4.double())
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def operator_table(args: argparse.Namespace, copy_gbs: float) -> str:
    headers = ["stage", "dtype", "layout", "pass", "unfold ms", "triton ms", "dwconv ms", "triton / dwconv",
               "triton GB/s", "% of copy"]  # fmt: skip
    rows = []
    for spec in args.stages.split(","):
        c, hw = (int(v) for v in spec.lower().split("x"))
        stage = Stage(args.batch, c, hw)
        for layout in args.layouts.split(","):
            err = check_triton(stage, layout)
            if err > 1e-4:
                print(f"warning: {stage.label} {layout}: triton vs unfold relative error {err:.2e}", file=sys.stderr)
            for dname in args.dtypes.split(","):
                dtype = DTYPES[dname]
                res = {}
                for m in args.methods.split(","):
                    res[m] = time_method(m, stage, dtype, layout, args)
                    torch.cuda.empty_cache()  # the unfold formulation's buffers are large
                print(f"[op] {stage.label} {dname} {layout}: {res}", file=sys.stderr, flush=True)
                for pass_, key in (("fwd", "fwd"), ("fwd+bwd", "fwdbwd")):
                    ms = {m: r.get(key) for m, r in res.items()}
                    t = ms.get("triton")
                    gbs = stage.must_move(dtype, key == "fwdbwd") / (t / 1e3) / GB if t else None
                    rows.append([
                        stage.label, dname, layout, pass_,
                        *(_util.fmt_num(ms.get(m)) if ms.get(m) else res.get(m, {}).get("error", "–") for m in METHODS),
                        _util.fmt_num(t / ms["dwconv"] if t and ms.get("dwconv") else None),
                        _util.fmt_num(gbs, 0),
                        _util.fmt_num(100 * gbs / copy_gbs if gbs else None, 0),
                    ])  # fmt: skip
    return _util.render_table(headers, rows, markdown=True, right=[False] * 4 + [True] * 6)


# -------------------------------------------------------------------------------------------------- models
def model_throughput(name: str, compiled: bool, args: argparse.Namespace) -> float:
    """Training images per second of ``name`` (channels_last, AMP, SGD), after a warm-up."""
    torch.manual_seed(0)
    model = involution.create_model(name).cuda().to(memory_format=torch.channels_last).train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp_dtype = DTYPES[args.amp_dtype]
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    size = args.image_size
    x = torch.randn(args.model_batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.model_batch,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype):
            loss = F.cross_entropy(step_model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    ms = _util.median(cuda_times(step, args.model_steps, args.model_warmup))
    del model, step_model, opt
    torch.cuda.empty_cache()
    return args.model_batch / (ms / 1e3)


def model_table(args: argparse.Namespace) -> str:
    headers = ["mode", "RedNet-50 img/s", "ResNet-50 img/s", "RedNet / ResNet throughput"]
    rows = []
    for compiled in (False, True):
        ips = {}
        for name in ("rednet50", "resnet50"):
            try:
                ips[name] = model_throughput(name, compiled, args)
            except Exception as exc:  # noqa: BLE001 - report the failure in the table, go on
                print(f"[models] {name} compiled={compiled}: {type(exc).__name__}: {exc}", file=sys.stderr)
                ips[name] = None
        mode = "torch.compile" if compiled else "eager"
        print(f"[models] {mode}: {ips}", file=sys.stderr, flush=True)
        r, b = ips["rednet50"], ips["resnet50"]
        rows.append([mode, _util.fmt_num(r, 0), _util.fmt_num(b, 0), _util.fmt_num(r / b if r and b else None)])
    return _util.render_table(headers, rows, markdown=True, right=[False, True, True, True])


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stages", default=STAGES, help=f"comma list of CxH (H=W), default {STAGES}")
    p.add_argument("--batch", type=int, default=32, help="N of the operator benchmark (default 32)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma list of float32,float16,bfloat16")
    p.add_argument("--layouts", default="channels_last,nchw", help="comma list of channels_last,nchw")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of unfold,triton,dwconv")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--no-models", action="store_true", help="skip the RedNet-50 / ResNet-50 training comparison")
    p.add_argument("--model-batch", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--image-size", type=int, default=224, help="training image size (default 224)")
    p.add_argument("--model-steps", type=int, default=20, help="timed training steps (default 20)")
    p.add_argument("--model-warmup", type=int, default=5, help="untimed steps first, compilation included")
    p.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"], help="autocast dtype")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the markdown tables to FILE")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            f"benchmarks/gpu.py needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda or 'none'})",
            file=sys.stderr,
        )
        return 2
    status = backend_status()
    if status.get("triton") != "available":
        print(f"benchmarks/gpu.py: the triton backend is unavailable: {status.get('triton')}", file=sys.stderr)
        return 2
    for name, allowed in ((args.dtypes, DTYPES), (args.methods, METHODS), (args.layouts, ("channels_last", "nchw"))):
        bad = [v for v in name.split(",") if v not in allowed]
        if bad:
            p.error(f"unknown value(s) {bad}; choose from {list(allowed)}")

    torch.backends.cudnn.benchmark = True
    copy_gbs = copy_bandwidth()
    import triton

    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## GPU (Triton)",
        "",
        f"- command: `{command.strip()}`",
        f"- GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
        f"involution {involution.__version__} (git {_util.git_revision(ROOT) or '?'})",
        f"- device-to-device copy: {copy_gbs:.0f} GB/s (read + write)",
        "",
        f"Operator, RedNet-50 involution layers, N={args.batch}, K=7, G=C/16 (median ms):",
        "",
        operator_table(args, copy_gbs),
    ]
    if not args.no_models:
        lines += [
            "",
            f"Training, batch {args.model_batch} at {args.image_size}x{args.image_size}, channels_last, "
            f"AMP {args.amp_dtype}, SGD:",
            "",
            model_table(args),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
