#!/usr/bin/env python
"""Deployment benchmark on the CPU: RedNet-26, RedNet-50 and ResNet-50 inference in eager PyTorch (float32 and
bfloat16), torch.compile, ONNX Runtime and OpenVINO (float32 and bfloat16), side by side.

Per runtime and batch size, the models are timed in rounds (each round runs every model once, the order reversed
every other round, so machine noise hits them alike); medians are reported with the ratio to ResNet-50 in the same
runtime and batch. Setup:

* every model has each BatchNorm that follows a convolution folded into it (``model.fuse()``, as ``involution
  export`` does; ``--no-fuse`` keeps them), ResNet-50 alike, so the comparison stays fair;
* eager and torch.compile: ``model.eval()``, channels_last model and input (the library's fast CPU path; the
  ``-nchw`` runtimes keep both contiguous), forward under ``torch.inference_mode()``; the ``-bf16`` runtimes run
  under ``torch.autocast("cpu", dtype=torch.bfloat16)``, as PyTorch advises for CPUs with native bfloat16; compile
  is ``torch.compile(model, dynamic=False)`` with inductor's ``freezing`` on (its CPU inference setting), the
  compilation absorbed by the warm-up;
* onnxruntime: the file written by ``involution.tasks.deploy.export_model`` (dynamic batch/height/width, the
  involution op lowered to standard ONNX by ``involution.ops.onnx``), CPUExecutionProvider, default graph
  optimisations, ``intra_op_num_threads`` = ``--threads``, NCHW float32 input;
* onnxruntime-custom: the same with ``onnx_ops="custom"``: one ``involution::Involution2d`` node per involution,
  run by the custom-op library of ``involution.ops.onnxruntime_library`` (built on first use; needs its headers:
  ``involution onnxruntime fetch-headers``).
* openvino, openvino-bf16: the project's OpenVINO path, ``export_model(..., "NAME.xml")`` (an IR whose involutions
  are the C++ extension's op) compiled by ``openvino_model(path, precision, threads)`` (``INFERENCE_PRECISION_HINT``
  f32 or bf16); openvino-standard(-bf16): the standard-operator ONNX file read by OpenVINO, for comparison.

The CPU model and its bfloat16 / AMX flags are printed with every table: the bf16 rows mean something only on a CPU
with native bfloat16 (avx512_bf16, amx_bf16).

Usage::

    python benchmarks/deploy.py                        # the full run (~15 min on 2 cores)
    python benchmarks/deploy.py --out docs/deploy.md   # also write the markdown report
    python benchmarks/deploy.py --quick                # smoke test: rednet26 vs resnet26, 64x64, 2 repeats
    python benchmarks/deploy.py --runtimes eager,onnxruntime --batches 8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable

import _util  # first: it puts this checkout's src/ on sys.path (the script's folder is already there)

ROOT = _util.ROOT
import torch  # noqa: E402

import involution  # noqa: E402
from involution.tasks.deploy import export_model, onnx_session  # noqa: E402

# PyTorch runtimes: channels_last unless "-nchw"; float32 unless "-bf16" (bfloat16 autocast).
TORCH_RUNTIMES = tuple(f"{base}{bf16}{layout}" for base in ("eager", "compile") for bf16 in ("", "-bf16")
                       for layout in ("", "-nchw"))
RUNTIMES = TORCH_RUNTIMES + ("onnxruntime", "onnxruntime-custom", "openvino", "openvino-bf16", "openvino-standard",
                             "openvino-standard-bf16")
DEFAULT_MODELS = "rednet26,rednet50,resnet50"


def _input(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def make_runner(runtime: str, name: str, batch: int, size: int, args: argparse.Namespace) -> Callable[[], object]:
    """A zero-argument callable running one forward of ``name`` at ``batch`` in ``runtime`` (built, not timed)."""
    torch.manual_seed(0)
    if runtime.startswith("onnxruntime"):
        path = _exported(name, "custom" if runtime == "onnxruntime-custom" else "standard", size, args)
        session = onnx_session(path, threads=args.threads)
        feed = {session.get_inputs()[0].name: _input(batch, size).numpy()}
        return lambda: session.run(None, feed)
    if runtime.startswith("openvino"):
        from involution.tasks.deploy import openvino_model

        path = _exported(name, "standard" if "standard" in runtime else "openvino", size, args)
        compiled = openvino_model(path, "bf16" if runtime.endswith("bf16") else "f32", threads=args.threads)
        request, x = compiled.create_infer_request(), _input(batch, size).numpy()
        return lambda: request.infer({0: x})
    layout = torch.contiguous_format if runtime.endswith("-nchw") else torch.channels_last
    model = involution.create_model(name).eval().to(memory_format=layout)
    if not args.no_fuse:
        model.fuse()
    compiled = runtime.startswith("compile")
    if compiled:
        import torch._inductor.config as inductor_config

        # Freezing (weights folded into the graph as constants) is inductor's CPU inference mode; without it the
        # compiled models ran 20-40x slower than eager here (weights re-laid out for oneDNN on every call).
        inductor_config.freezing = True
        # Every model instance is a new guard on the shared forward code: without a higher limit dynamo falls back
        # to eager after 8 compilations (here: 3 models x 2 batches x 4 compile runtimes).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 1024)
    fn = torch.compile(model, dynamic=False) if compiled else model
    x = _input(batch, size).contiguous(memory_format=layout)
    bf16 = "-bf16" in runtime

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return fn(x)

    return run


def _exported(name: str, form: str, size: int, args: argparse.Namespace) -> str:
    """The file of ``name`` in ``form`` ("standard" or "custom" ONNX, or an "openvino" IR), exported once."""
    path = args.exported.get((name, form))
    if path is None:
        path = os.path.join(args.workdir, f"{name}-{form}" + (".xml" if form == "openvino" else ".onnx"))
        export_model(name, path, input_size=(3, size, size), onnx_ops="custom" if form == "custom" else "standard",
                     fuse=not args.no_fuse, log=lambda m: print(f"[export {name}] {m}", file=sys.stderr))
        args.exported[(name, form)] = path
    return path


def time_group(runtime: str, batch: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """{model: seconds per run} for every model in one runtime at one batch, timed round-robin."""
    runners = {}
    for name in args.models:
        t0 = time.perf_counter()
        runners[name] = make_runner(runtime, name, batch, args.size, args)
        for _ in range(args.warmup):
            runners[name]()
        print(f"[{runtime} b{batch}] {name} ready ({time.perf_counter() - t0:.0f} s incl. warm-up)",
              file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {n: [] for n in args.models}
    for r in range(args.repeats):
        for name in args.models if r % 2 == 0 else args.models[::-1]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def build_table(
    results: dict[tuple[str, int], dict[str, list[float]]], args: argparse.Namespace, markdown: bool
) -> str:
    """Rows: runtime x batch; columns: models, ``median ms (ratio to the baseline)``, and the row's spread."""
    head = ["runtime", "batch"] + [f"{name} ms (÷ {args.baseline})" for name in args.models] + ["runs (±IQR/2)"]
    rows = []
    for rt in args.runtimes:
        for b in args.batches:
            times = results.get((rt, b), {})
            base = _util.median(times.get(args.baseline, [])) * 1e3
            cells = [rt, str(b)]
            for name in args.models:
                med = _util.median(times.get(name, [])) * 1e3
                ratio = med / base if base == base and base > 0 else float("nan")
                cells.append(f"{_util.fmt_num(med, 1)} ({_util.fmt_num(ratio)}x)")
            noise = [n for n in (_util.rel_iqr(times.get(name, [])) for name in args.models) if n == n]
            cells.append(f"{args.repeats}" + (f" (±{max(noise) * 50:.0f}%)" if noise else ""))
            rows.append(cells)
    return _util.render_table(head, rows, markdown, [False, True] + [True] * (len(head) - 2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None, help=f"comma list of registry names (default {DEFAULT_MODELS})")
    p.add_argument("--baseline", default=None, help="the model the ratios divide by (default: the last one)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list of {', '.join(RUNTIMES)}")
    p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8)")
    p.add_argument("--size", type=int, default=None, help="image height = width (default 224)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per model (default 2; compilation included)")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: usable CPUs)")
    p.add_argument("--no-fuse", action="store_true", help="keep the BatchNorms (default: folded, in every model)")
    p.add_argument("--quick", action="store_true", help="smoke test: rednet26 vs resnet26, 64x64, batch 2, 2 repeats")
    p.add_argument("--out", metavar="PATH", help="also write the markdown report to PATH")
    args = p.parse_args(argv)
    command = "python benchmarks/deploy.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    if args.quick:
        args.models = args.models or "rednet26,resnet26"
        args.size, args.batches = args.size or 64, args.batches or "2"
        args.repeats, args.warmup = args.repeats or 2, args.warmup or 1
    args.models = [m.strip() for m in (args.models or DEFAULT_MODELS).split(",") if m.strip()]
    args.baseline = args.baseline or args.models[-1]
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    args.batches = [int(b) for b in (args.batches or "1,8").split(",")]
    args.size, args.repeats = args.size or 224, args.repeats or 10
    args.warmup = args.warmup or 2
    args.threads = args.threads or _util.usable_cpus()
    known = set(involution.list_models())
    unknown = [r for r in args.runtimes if r not in RUNTIMES] + [m for m in args.models if m not in known]
    if unknown or args.baseline not in args.models:
        raise SystemExit(f"unknown runtime or model: {unknown or args.baseline}; runtimes: {', '.join(RUNTIMES)}")
    torch.set_num_threads(args.threads)

    info = [
        ("command", f"`{command}`"),
        ("involution", involution.__version__ + (f" (git {rev})" if (rev := _util.git_revision(ROOT)) else "")),
        ("torch", torch.__version__),
        ("python", sys.version.split()[0]),
        ("CPU", f"{_util.cpu_model()} ({_util.usable_cpus()} usable CPUs)"),
        ("CPU flags", _util.cpu_precision_flags()),
        ("threads", f"{args.threads} (torch.set_num_threads, onnxruntime intra_op_num_threads)"),
        ("load avg", _util.load_average() + " (1/5/15 min, at start)"),
        ("setup", f"{args.size}x{args.size}, batches {', '.join(map(str, args.batches))}, float32 input, "
                  f"{args.repeats} timed rounds after {args.warmup} warm-up runs"),
    ]
    if any(r.startswith("onnxruntime") for r in args.runtimes):
        import onnxruntime

        info.append(("onnxruntime", f"{onnxruntime.__version__}, CPUExecutionProvider"))
    if any(r.startswith("openvino") for r in args.runtimes):
        import openvino

        info.append(("openvino", f"{openvino.__version__}, CPU plugin"))
    for k, v in info:
        print(f"{k:>12}: {v.strip('`')}")

    t_start = time.perf_counter()
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="involution-deploy-") as workdir:
        args.workdir, args.exported = workdir, {}
        for runtime in args.runtimes:
            for batch in args.batches:
                results[(runtime, batch)] = time_group(runtime, batch, args)
    elapsed = time.perf_counter() - t_start
    print()
    print(build_table(results, args, markdown=False))
    load_end = _util.load_average()
    print(f"\nload avg at the end: {load_end}; run time {elapsed:.0f} s")
    if args.out:
        md = [f"- {k}: {v}" for k, v in info]
        md += [f"- load avg at the end: {load_end}; run time {elapsed:.0f} s", ""]
        md += [build_table(results, args, markdown=True), ""]
        raw = {f"{rt} b{b}": times for (rt, b), times in results.items()}  # seconds per run, for re-analysis
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump(raw, fh, indent=1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("\n".join(md))
        print(f"markdown written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
