"""Summaries of a study's results: mean and standard deviation per arm, a noise verdict, a table and a plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._atomic import write_text_atomic
from ..plots import pyplot, save_figure
from ..run_dir import write_csv, write_json

ReferenceOf = Callable[[str, Any], "tuple[str, Any] | None"]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (variant, group), in first-seen order: seeds, accuracy mean/std, params, MACs, time per step."""
    arms: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        arms.setdefault((row["variant"], json.dumps(row["group"])), []).append(row)
    out = []
    for (variant, group), members in arms.items():
        acc = np.array([m["test_acc"] for m in members], dtype=float)
        step = np.array([m["seconds_per_step"] for m in members], dtype=float)
        out.append({
            "variant": variant,
            "group": members[0]["group"],
            "seeds": len(members),
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
            "params": members[0]["params"],
            "macs": members[0]["macs"],
            "ms_per_step": float(np.median(step) * 1e3),
        })
    return out


def group_label(group: Any, percent: bool = False) -> str:
    """How a group is written in tables: ``0.05`` -> ``5%`` for fractions, else as is."""
    if percent and isinstance(group, (int, float)):
        return f"{100 * group:g}%"
    return f"{group:g}" if isinstance(group, float) else str(group)


def difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, bool]:
    """``a - b`` in accuracy points, its standard error and whether it is within noise (|diff| < 2 standard errors).

    With fewer than two seeds on either side there is no noise estimate and the verdict is "within noise".
    """
    diff = 100 * (a["acc_mean"] - b["acc_mean"])
    if a["seeds"] < 2 or b["seeds"] < 2:
        return diff, float("nan"), True
    se = 100 * math.sqrt(a["acc_std"] ** 2 / a["seeds"] + b["acc_std"] ** 2 / b["seeds"])
    return diff, se, abs(diff) < 2 * se


def _millions(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f}"


def _fmt_acc(arm: dict[str, Any]) -> str:
    if math.isnan(arm["acc_std"]):
        return f"{100 * arm['acc_mean']:.2f}"
    return f"{100 * arm['acc_mean']:.2f} ± {100 * arm['acc_std']:.2f}"


def markdown_table(summary: Sequence[dict[str, Any]], x: str, reference_of: ReferenceOf | None = None,
                   percent: bool = False) -> str:
    """A markdown table, one row per arm; with ``reference_of`` each row's difference to its reference arm.

    ``reference_of(variant, group)`` names the ``(variant, group)`` an arm is compared with (None: no comparison).
    """
    head = f"| {x} | variant | seeds | test accuracy % (mean ± sd) | params | MMACs/image | ms/step |"
    rule = "|" + "---|" * 7
    if reference_of:
        head += " difference (points, ± standard error) |"
        rule += "---|"
    lines = [head, rule]
    arms = {(a["variant"], json.dumps(a["group"])): a for a in summary}
    for arm in summary:
        line = (f"| {group_label(arm['group'], percent)} | {arm['variant']} | {arm['seeds']} | {_fmt_acc(arm)} | "
                f"{arm['params'] / 1e6:.3f} M | {_millions(arm['macs'])} | {arm['ms_per_step']:.0f} |")
        if reference_of:
            target = reference_of(arm["variant"], arm["group"])
            ref = arms.get((target[0], json.dumps(target[1]))) if target else None
            if ref is None or ref is arm:
                line += " reference |" if ref is arm else " |"
            else:
                diff, se, noise = difference(arm, ref)
                verdict = "within noise" if noise else "beyond noise"
                line += f" {diff:+.2f} ± {se:.2f}, {verdict} |" if not math.isnan(se) else f" {diff:+.2f} |"
        lines.append(line)
    return "\n".join(lines)


def plot_summary(summary: Sequence[dict[str, Any]], path: str | os.PathLike, title: str, x: str,
                 log_x: bool = False) -> Path:
    """Accuracy with standard-deviation bars: lines over a numeric x, grouped bars otherwise."""
    plt = pyplot()
    variants = list(dict.fromkeys(a["variant"] for a in summary))
    numeric = all(isinstance(a["group"], (int, float)) and not isinstance(a["group"], bool) for a in summary)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if numeric:
        for v in variants:
            arms = sorted((a for a in summary if a["variant"] == v), key=lambda a: a["group"])
            xs = [a["group"] for a in arms]
            ax.errorbar(xs, [100 * a["acc_mean"] for a in arms], yerr=[100 * np.nan_to_num(a["acc_std"]) for a in arms],
                        marker="o", capsize=3, label=v)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x)
    else:
        groups = list(dict.fromkeys(group_label(a["group"]) for a in summary))
        width = 0.8 / len(variants)
        for i, v in enumerate(variants):
            arms = {group_label(a["group"]): a for a in summary if a["variant"] == v}
            xs = [j + i * width for j, g in enumerate(groups) if g in arms]
            ys = [100 * arms[g]["acc_mean"] for g in groups if g in arms]
            err = [100 * np.nan_to_num(arms[g]["acc_std"]) for g in groups if g in arms]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=v)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, rotation=15, ha="right")
        lows = [100 * (a["acc_mean"] - np.nan_to_num(a["acc_std"])) for a in summary]
        ax.set_ylim(max(0.0, min(lows) - 3), min(100.0, max(100 * a["acc_mean"] for a in summary) + 2))
        ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


START, END = "<!-- results: written by `involution study`, do not edit by hand -->", "<!-- end of results -->"


def write_report(study: Any, rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, command: str) -> dict[str, Path]:
    """``NAME.md`` (table, plot, command, compute), ``NAME.png``, ``NAME_summary.csv`` / ``.json`` in ``out_dir``.

    An existing ``NAME.md`` keeps everything outside its results block (the question, the conclusion written from
    the numbers); only the block between the markers is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    paths = {
        "csv": write_csv(out_dir / f"{study.name}_summary.csv", summary),
        "json": write_json(out_dir / f"{study.name}_summary.json", summary),
    }
    paths["png"] = plot_summary(summary, out_dir / f"{study.name}.png", study.question, study.x, study.log_x)
    hours = sum(r["wall_s"] for r in rows) / 3600
    seeds = sorted({r["seed"] for r in rows})
    block = "\n".join([
        START,
        f"![{study.name}]({study.name}.png)",
        "",
        markdown_table(summary, study.x, study.reference_of, study.percent),
        "",
        f"Command: `{command}`  ",
        f"Compute: {len(rows)} training runs (seeds {', '.join(map(str, seeds))}), {hours:.2f} hours of wall-clock "
        "time on 2 CPU cores. Differences are given ± their standard error over seeds; \"within noise\" means "
        "less than two standard errors.",
        END,
    ])
    path = out_dir / f"{study.name}.md"
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        text = old[: old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        text = f"# Study: {study.question}\n\n{block}\n"
    write_text_atomic(path, text)
    paths["md"] = path
    return paths
