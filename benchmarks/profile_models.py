#!/usr/bin/env python
"""Where the inference time of RedNet-50 and ResNet-50 goes on the CPU: a per-category profile.

Each model (``--models``) in each layout (``--layouts``), as built and with its BatchNorms folded (``--fused``), runs
``--repeats`` forwards at batch ``--batch`` under ``torch.profiler``; every top-level operator is put in one
category and its inclusive CPU time summed:

* ``conv``: convolutions outside the kernel generators (1x1, the stems' 3x3/7x7, downsample);
* ``generator conv``: the convolutions of every involution's kernel generator (``conv1``, ``conv2``), marked with
  ``torch.profiler.record_function`` from module hooks;
* ``involution op``: ``involution::involution2d``;
* ``batch norm``, ``elementwise`` (ReLU, residual adds), ``pooling``, ``classifier`` (linear), ``other``.

The table gives ms per forward and the share of the total. Usage::

    python benchmarks/profile_models.py                        # rednet50, resnet50; NCHW and channels_last
    python benchmarks/profile_models.py --fused --markdown -   # BatchNorms folded, markdown to stdout
    python benchmarks/profile_models.py --fused --bf16         # under bfloat16 autocast
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict

import _util  # first: it puts this checkout's src/ on sys.path

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import involution  # noqa: E402
from involution import Involution2d  # noqa: E402

GENERATOR = "involution.kernel_generator"
CATEGORIES = ("conv", "generator conv", "involution op", "batch norm", "elementwise", "pooling", "classifier",
              "copy", "other")
_BY_OP = {
    "aten::conv2d": "conv", "aten::convolution": "conv", "aten::_convolution": "conv",
    "aten::mkldnn_convolution": "conv",
    "involution::involution2d": "involution op",
    "aten::batch_norm": "batch norm", "aten::_batch_norm_impl_index": "batch norm",
    "aten::native_batch_norm": "batch norm", "aten::_native_batch_norm_legit_no_training": "batch norm",
    "aten::relu": "elementwise", "aten::relu_": "elementwise", "aten::add": "elementwise", "aten::add_": "elementwise",
    "aten::max_pool2d": "pooling", "aten::avg_pool2d": "pooling", "aten::adaptive_avg_pool2d": "pooling",
    "aten::mean": "pooling", "aten::linear": "classifier", "aten::addmm": "classifier",
    # dtype and layout conversions (under bf16 autocast: the casts of weights and activations)
    "aten::copy_": "copy", "aten::to": "copy", "aten::_to_copy": "copy", "aten::contiguous": "copy",
    "aten::clone": "copy",
}


def mark_generators(model: torch.nn.Module) -> list:
    """Hooks that wrap each involution's generator convolutions in a ``record_function`` range."""
    handles = []
    for layer in model.modules():
        if isinstance(layer, Involution2d):
            for part in (layer.conv1, layer.conv2):
                ranges = []
                handles.append(part.register_forward_pre_hook(
                    lambda _m, _a, ranges=ranges: ranges.append(record_function(GENERATOR).__enter__())))
                handles.append(part.register_forward_hook(
                    lambda _m, _a, _o, ranges=ranges: ranges.pop().__exit__(None, None, None)))
    return handles


def categorise(events) -> dict[str, float]:
    """Inclusive CPU time (µs) per category of the outermost operators (inside a generator range: their own)."""
    totals: dict[str, float] = defaultdict(float)

    def visit(event, in_generator: bool) -> None:
        if event.name == GENERATOR:
            for child in event.cpu_children:
                visit(child, True)
            return
        category = _BY_OP.get(event.name, "other")
        if category == "conv" and in_generator:
            category = "generator conv"
        totals[category] += event.cpu_time_total

    for event in events:
        if event.cpu_parent is None:
            visit(event, False)
    return totals


def profile_model(
    name: str, layout: str, fused: bool, batch: int, size: int, repeats: int, bf16: bool = False
) -> dict[str, float]:
    """ms per forward in each category (``bf16``: under bfloat16 autocast)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = involution.create_model(name).eval().to(memory_format=fmt)
    if fused:
        model.fuse()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    handles = mark_generators(model)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up (oneDNN primitive caches, the C++ extension's build)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    for h in handles:
        h.remove()
    return {k: v / 1e3 / repeats for k, v in categorise(prof.events()).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="rednet50,resnet50")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--fused", action="store_true", help="fold the BatchNorms first (model.fuse())")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="run under torch.autocast('cpu', dtype=torch.bfloat16)")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown ('-': print it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or _util.usable_cpus())
    columns = [(m.strip(), lay.strip()) for m in args.models.split(",") for lay in args.layouts.split(",")]
    results = {}
    for name, layout in columns:
        print(f"[profile] {name} {layout}{' fused' if args.fused else ''}", file=sys.stderr, flush=True)
        results[(name, layout)] = profile_model(name, layout, args.fused, args.batch, args.size, args.repeats,
                                                args.bf16)
    heads = ["category"] + [f"{n} {'NCHW' if lay == 'nchw' else 'CL'}" for n, lay in columns]
    rows = []
    for cat in (*CATEGORIES, "total"):
        cells = [cat]
        for col in columns:
            r = results[col]
            total = sum(r.values())
            ms = total if cat == "total" else r.get(cat, 0.0)
            cells.append(f"{ms:.1f} ({100 * ms / total:.0f}%)" if total else "–")
        rows.append(cells)
    command = "python benchmarks/profile_models.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    setup = (f"batch {args.batch}, {args.size}x{args.size}, {'bfloat16 autocast' if args.bf16 else 'float32'}, "
             f"{torch.get_num_threads()} threads, "
             f"{'BatchNorms folded' if args.fused else 'as built'}, ms per forward (share), {args.repeats} forwards")
    print(f"{command}\n{setup}\n{_util.cpu_precision_flags()}\n")
    print(_util.render_table(heads, rows, False, [False] + [True] * len(columns)))
    if args.markdown:
        md = f"- command: `{command}`\n- setup: {setup}\n- CPU: {_util.cpu_precision_flags()}\n\n" + _util.render_table(
            heads, rows, True, [False] + [True] * len(columns)) + "\n"
        _util.write_markdown(args.markdown, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
