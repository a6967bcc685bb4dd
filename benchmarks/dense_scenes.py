"""Table and curves of detection / segmentation runs on the generated scenes (docs/dense.md).

Reads the ``metrics.json`` of finished ``involution detect|segment train`` run directories and prints a markdown
table (parameters, training time, the validation metrics of the best epoch) and draws the validation metric per
epoch of every run into one picture:

    python benchmarks/dense_scenes.py runs/dense/maskrcnn-convolution runs/dense/maskrcnn-involution \\
        runs/dense/fpn-convolution runs/dense/fpn-involution --plot docs/images/dense_scenes_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _util  # noqa: F401  (puts src/ on sys.path)

from involution.tasks.engine.plots import pyplot, save_figure

SHOWN = {"detect": ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"), "segment": ("mIoU", "pixel_acc", "mean_acc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--plot", type=Path, help="PNG of the validation metric against epoch")
    args = parser.parse_args()
    runs = [(run, json.loads((run / "metrics.json").read_text())) for run in args.runs]
    print("| run | model | neck / head | params | train time | best epoch | metrics of the best epoch (%) |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for run, m in runs:
        config = json.loads((run / "config.json").read_text())
        kwargs = config["model_kwargs"]
        best = next(r for r in m["history"] if r["epoch"] == m["best_epoch"])
        shown = ", ".join(f"{k} {100 * best[f'val_{k}']:.1f}" for k in SHOWN[m["task"]] if f"val_{k}" in best)
        parts = f"{kwargs.get('neck', 'convolution')} / {kwargs.get('head', 'convolution')}"
        print(f"| {run.name} | {m['model']} | {parts} | {m['params'] / 1e6:.2f} M | {m['train_time_s'] / 60:.1f} min "
              f"| {m['best_epoch']} | {shown} |")
    if args.plot:
        plt = pyplot()
        tasks = sorted({m["task"] for _, m in runs})
        fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for run, m in runs:
                if m["task"] != task:
                    continue
                key = f"val_{m['metric']}"
                rows = [r for r in m["history"] if key in r]
                ax.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], marker="o", ms=3, label=run.name)
            ax.set(xlabel="epoch", ylabel=f"val {SHOWN[task][0]} (%)", title=f"{task}: validation")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        print(f"wrote {save_figure(fig, args.plot)}")


if __name__ == "__main__":
    main()
