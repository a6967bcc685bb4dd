"""The 3-D comparison of docs/video.md: video_rednet_tiny (Involution3d) against video_resnet_tiny (its Conv3d
twin), same recipe and budget, several seeds, on moving Fashion-MNIST clips; then the table.

    python benchmarks/video_run.py --data-dir ../shared/data --seeds 0 1 2 --out runs/video-study

Each run is one ``involution train-video`` command (printed before it starts), one after another (``--threads``);
a run whose metrics.json says finished is not run again, so the script can be restarted. The table: mean +- sd of
the test accuracy per model, Welch's t-test of the difference with its 95% interval, Holm's correction over the
comparisons made (test accuracy and training time), the wall time per run, parameters and multiply-adds per clip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

MODELS = ("video_rednet_tiny", "video_resnet_tiny")


def command(model: str, seed: int, data_dir: str, out: Path, threads: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "involution", "train-video", "--data", "fashion-mnist", "--data-dir", data_dir,
            "--model", model, "--seed", str(seed), "--threads", str(threads), "--no-progress", "--out", str(out),
            *extra]


def finished(run: Path) -> dict | None:
    path = run / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("status") == "finished" else None


def macs_per_clip(model_name: str, frames: int = 8, size: int = 32) -> int:
    """Forward multiply-adds of one 1 x frames x size x size clip (convolutions, linear, involution aggregation)."""
    from torch.utils.flop_counter import FlopCounterMode

    from involution.models import create_model
    from involution.ops.flops import register_flop_formulas

    register_flop_formulas()
    model = create_model(model_name, num_classes=8, in_chans=1).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, frames, size, size))
    return counter.get_total_flops() // 2


def _mean_sd(values: np.ndarray, digits: int) -> str:
    """``mean ± sd`` (the mean alone for one value)."""
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def table(runs: dict[str, list[dict]]) -> str:
    from involution.models import count_params, create_model
    from involution.tasks.studies.report import holm, welch

    header = ("| model | spatio-temporal layer | params | MACs / clip | seeds | test accuracy (%) | best val (%) "
              "| train time / run (s) |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        rows = runs[name]
        acc = 100 * np.array([r["test_acc"] for r in rows])
        val = 100 * np.array([r["best_val_acc"] for r in rows])
        sec = np.array([r["train_time_s"] for r in rows])
        layer = "Involution3d" if "rednet" in name else "Conv3d"
        params = count_params(create_model(name, num_classes=8, in_chans=1))
        lines.append(f"| {name} | {layer} | {params:,} | {macs_per_clip(name) / 1e6:.1f} M | {len(rows)} "
                     f"| {_mean_sd(acc, 2)} | {_mean_sd(val, 2)} | {_mean_sd(sec, 0)} |")
    a, b = (runs[m] for m in MODELS)
    if min(len(a), len(b)) < 2:  # one seed (a check run): the runs, no test
        lines += ["", f"(Welch's test needs two runs a side, got {len(a)} and {len(b)}: give two --seeds or more)"]
        return "\n".join(lines)
    tests = {"test accuracy (points)": welch([100 * r["test_acc"] for r in a], [100 * r["test_acc"] for r in b]),
             "train time (s)": welch([r["train_time_s"] for r in a], [r["train_time_s"] for r in b])}
    adjusted = holm([t["p"] for t in tests.values()])
    lines += ["", "| Involution3d - Conv3d | difference | 95% interval | Welch p | Holm p | verdict |",
              "|---|---:|---:|---:|---:|---|"]
    for (what, t), p_holm in zip(tests.items(), adjusted):
        verdict = "different (p < 0.05)" if p_holm < 0.05 else "not resolved at this budget"
        lines.append(f"| {what} | {t['diff']:+.2f} | [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] | {t['p']:.3g} "
                     f"| {p_holm:.3g} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/video-study")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (1: steady on a shared machine)")
    parser.add_argument("--table-only", action="store_true", help="only the table of the finished runs")
    parser.add_argument("extra", nargs="*", help="more train-video options, after --")
    args = parser.parse_args()
    out = Path(args.out)
    runs: dict[str, list[dict]] = {m: [] for m in MODELS}
    for seed in args.seeds:
        for model in MODELS:
            run = out / f"{model}-s{seed}"
            if finished(run) is None and not args.table_only:
                cmd = command(model, seed, args.data_dir, run, args.threads, args.extra)
                print(" ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)
            metrics = finished(run)
            if metrics is not None:
                runs[model].append(metrics)
                print(f"{model} seed {seed}: test {100 * metrics['test_acc']:.2f}%  "
                      f"{metrics['train_time_s']:.0f} s", flush=True)
    text = table(runs)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
