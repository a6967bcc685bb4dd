#!/usr/bin/env python
"""RedNet-50 and ResNet-50 inference in each memory layout a user can end up in, side by side on the CPU.

Five configurations, timed round-robin (the order reversed every other round) at one batch size, 224x224, float32:

* ``rednet50`` with an NCHW input and ``channels_last=False``: NCHW throughout, the op on its NCHW kernels;
* ``rednet50`` with an NCHW input as built (NHWC weights, ``channels_last=True``: the stem's first convolution
  converts the input once);
* ``rednet50`` with model and input channels_last;
* ``resnet50`` with an NCHW input (as built, like torchvision's) and with model and input channels_last.

Medians with their interquartile range, and each median's ratio to ResNet-50 in NCHW. Usage::

    python benchmarks/layouts.py                 # batch 8, 8 rounds (~2 min on 2 cores)
    python benchmarks/layouts.py --batch 1 --rounds 30
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import _util  # first: it puts this checkout's src/ on sys.path

import torch  # noqa: E402

import involution  # noqa: E402

CL = torch.channels_last


def configurations(batch: int) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xcl = x.contiguous(memory_format=CL)

    def build(name: str, **kwargs) -> torch.nn.Module:
        torch.manual_seed(0)
        return involution.create_model(name, **kwargs).eval()

    return {
        "rednet50, NCHW input, channels_last=False (NCHW kernels)": (build("rednet50", channels_last=False), x),
        "rednet50, NCHW input, as built (create_model's NHWC weights)": (build("rednet50"), x),
        "rednet50, model and input channels_last": (build("rednet50").to(memory_format=CL), xcl),
        "resnet50, NCHW input, as built": (build("resnet50"), x),
        "resnet50, model and input channels_last": (build("resnet50").to(memory_format=CL), xcl),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or _util.usable_cpus())
    cases = configurations(args.batch)
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        for model, x in cases.values():  # warm-up: oneDNN primitives, the C++ extension's build
            model(x)
            model(x)
        for r in range(args.rounds):
            order = list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]
            for name, (model, x) in order:
                t0 = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["resnet50, NCHW input, as built"])
    command = "python benchmarks/layouts.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    print(f"- command: `{command}`")
    print(f"- batch {args.batch}, 224x224, float32, {torch.get_num_threads()} threads, {args.rounds} rounds; "
          f"load avg at the end {_util.load_average()}\n")
    print("| configuration | median ms [IQR] | ÷ resnet50 NCHW |\n| :--- | ---: | ---: |")
    for name, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} [{q1 * 1e3:.1f}-{q3 * 1e3:.1f}] | "
              f"{statistics.median(ts) / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
