"""Summaries of a study's results: mean and standard deviation per arm, Welch's t-test of each arm against its
reference arm with Holm's correction across the study's comparisons, a table and a plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._atomic import write_text_atomic
from ..engine.plots import pyplot, save_figure
from ..engine.run_dir import write_csv, write_json

ReferenceOf = Callable[[str, Any], "tuple[str, Any] | None"]

ALPHA = 0.05  # a difference is called resolved when its Holm-adjusted p-value is below this
RESOLVED_HIGHER = "resolved: higher than reference"
RESOLVED_LOWER = "resolved: lower than reference"
NOT_RESOLVED = "not resolved at this budget"
TOO_FEW_SEEDS = "no test: fewer than 2 seeds a side"
NO_SPREAD = "no test: no spread between seeds"


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (variant, group), in first-seen order: seeds, accuracy mean/std, params, MACs, time per step.

    ``accs`` holds the per-seed test accuracies (fractions) and ``seed_ids`` their seeds, in the same order: the
    statistical tests work on them.
    """
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
            "accs": [float(a) for a in acc],
            "seed_ids": [m.get("seed") for m in members],
        })
    return out


def group_label(group: Any, percent: bool = False) -> str:
    """How a group is written in tables: ``0.05`` -> ``5%`` for fractions, else as is."""
    if percent and isinstance(group, (int, float)):
        return f"{100 * group:g}%"
    return f"{group:g}" if isinstance(group, float) else str(group)


def welch(a_values: Sequence[float], b_values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``, with its confidence interval.

    Returns ``diff`` (mean of a minus mean of b, in the inputs' units), ``se`` (its standard error,
    ``sqrt(var_a / n_a + var_b / n_b)`` with sample variances), ``df`` (Welch-Satterthwaite degrees of freedom),
    ``t`` and the two-sided ``p`` (from :func:`scipy.stats.ttest_ind` with ``equal_var=False``), and ``ci_low`` /
    ``ci_high``: ``diff -+ t_{(1 + confidence) / 2, df} * se``. Both samples need at least two values. When
    neither sample varies (``se == 0``) there is no test: ``t``, ``df``, ``p`` and the interval are NaN.
    """
    from scipy import stats

    a, b = np.asarray(a_values, dtype=float), np.asarray(b_values, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs at least two values a side, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), float(math.sqrt(va + vb))
    nan = float("nan")
    if se == 0:
        return {"diff": diff, "se": se, "df": nan, "t": nan, "p": nan, "ci_low": nan, "ci_high": nan}
    df = float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
    test = stats.ttest_ind(a, b, equal_var=False)
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return {"diff": diff, "se": se, "df": df, "t": float(test.statistic), "p": float(test.pvalue),
            "ci_low": diff - half, "ci_high": diff + half}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in the order given.

    With the ``m`` finite p-values sorted ascending, the ``i``-th smallest (``i`` from 1) becomes
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``: monotone in the raw p-values and capped at 1. Rejecting
    where the adjusted value is below ``alpha`` keeps the family-wise error rate at ``alpha``. NaN entries (no
    test) stay NaN and do not count in ``m``.
    """
    finite = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(finite)
    adjusted = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float] | None:
    """Arm ``a`` minus arm ``b`` (summary entries) in accuracy points: :func:`welch` on their per-seed accuracies.

    None when either arm has fewer than two seeds (no test).
    """
    if a["seeds"] < 2 or b["seeds"] < 2:
        return None
    return welch([100 * x for x in a["accs"]], [100 * x for x in b["accs"]])


def comparisons(summary: Sequence[dict[str, Any]], reference_of: ReferenceOf | None) -> list[dict[str, Any] | None]:
    """Each arm's comparison with its reference arm, one entry per summary entry (None: no reference).

    An entry is ``{"reference": True}`` for a reference arm itself; otherwise it holds ``diff`` (points),
    ``test`` (:func:`difference`: None when either side has fewer than two seeds), ``p_holm`` where there is a
    p-value (Holm's adjustment over every comparison of this summary that has one: one family per study) and
    ``verdict``.
    """
    if reference_of is None:
        return [None] * len(summary)
    arms = {(a["variant"], json.dumps(a["group"])): a for a in summary}
    out: list[dict[str, Any] | None] = []
    for arm in summary:
        target = reference_of(arm["variant"], arm["group"])
        ref = arms.get((target[0], json.dumps(target[1]))) if target else None
        if ref is None:
            out.append(None)
        elif ref is arm:
            out.append({"reference": True})
        else:
            diff = 100 * (arm["acc_mean"] - ref["acc_mean"])
            out.append({"reference": False, "diff": diff, "test": difference(arm, ref)})
    tested = [c for c in out if c and c.get("test") is not None]
    for entry, p_holm in zip(tested, holm([c["test"]["p"] for c in tested])):
        entry["p_holm"] = p_holm
    for c in out:
        if c and not c["reference"]:
            test = c["test"]
            if test is None:
                c["verdict"] = TOO_FEW_SEEDS
            elif math.isnan(test["p"]):
                c["verdict"] = NO_SPREAD
            elif c["p_holm"] < ALPHA:
                c["verdict"] = RESOLVED_HIGHER if test["diff"] > 0 else RESOLVED_LOWER
            else:
                c["verdict"] = NOT_RESOLVED
    return out


def family_size(summary: Sequence[dict[str, Any]], reference_of: ReferenceOf | None) -> int:
    """How many comparisons of this summary have a p-value (the ``m`` of Holm's correction)."""
    return sum(1 for c in comparisons(summary, reference_of) if c and "p_holm" in c and not math.isnan(c["p_holm"]))


def _millions(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.1f}"


def _fmt_acc(arm: dict[str, Any]) -> str:
    if math.isnan(arm["acc_std"]):
        return f"{100 * arm['acc_mean']:.2f}"
    return f"{100 * arm['acc_mean']:.2f} ± {100 * arm['acc_std']:.2f}"


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


COMPARISON_HEAD = f" difference to reference, points [95% CI] | p (Welch) | p (Holm) | verdict (p_Holm < {ALPHA:g}) |"


def markdown_table(summary: Sequence[dict[str, Any]], x: str, reference_of: ReferenceOf | None = None,
                   percent: bool = False) -> str:
    """A markdown table, one row per arm; with ``reference_of`` each row's comparison with its reference arm.

    ``reference_of(variant, group)`` names the ``(variant, group)`` an arm is compared with (None: no comparison).
    A comparison is the difference in accuracy points with its 95% confidence interval, Welch's p-value, the
    Holm-adjusted p-value over the table's comparisons and the verdict (see :func:`comparisons`).
    """
    head = f"| {x} | variant | seeds | test accuracy % (mean ± sd) | params | MMACs/image | ms/step |"
    rule = "|" + "---|" * 7
    if reference_of:
        head += COMPARISON_HEAD
        rule += "---|" * 4
    lines = [head, rule]
    for arm, comp in zip(summary, comparisons(summary, reference_of)):
        line = (f"| {group_label(arm['group'], percent)} | {arm['variant']} | {arm['seeds']} | {_fmt_acc(arm)} | "
                f"{arm['params'] / 1e6:.3f} M | {_millions(arm['macs'])} | {arm['ms_per_step']:.0f} |")
        if reference_of:
            if comp is None:
                line += " | | | |"
            elif comp["reference"]:
                line += " reference | | | |"
            elif comp["test"] is None:
                line += f" {comp['diff']:+.2f} | | | {comp['verdict']} |"
            else:
                t = comp["test"]
                interval = "" if math.isnan(t["ci_low"]) else f" [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]"
                line += (f" {t['diff']:+.2f}{interval} | {_fmt_p(t['p'])} | {_fmt_p(comp.get('p_holm', math.nan))} | "
                         f"{comp['verdict']} |")
        lines.append(line)
    return "\n".join(lines)


def plot_summary(summary: Sequence[dict[str, Any]], path: str | os.PathLike, title: str, x: str,
                 log_x: bool = False) -> Path:
    """Mean accuracy with bars of one standard deviation over seeds: lines over a numeric x, grouped bars otherwise."""
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
            by_group = {group_label(a["group"]): a for a in summary if a["variant"] == v}
            xs = [j + i * width for j, g in enumerate(groups) if g in by_group]
            ys = [100 * by_group[g]["acc_mean"] for g in groups if g in by_group]
            err = [100 * np.nan_to_num(by_group[g]["acc_std"]) for g in groups if g in by_group]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=v)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, rotation=15, ha="right")
        lows = [100 * (a["acc_mean"] - np.nan_to_num(a["acc_std"])) for a in summary]
        ax.set_ylim(max(0.0, min(lows) - 3), min(100.0, max(100 * a["acc_mean"] for a in summary) + 2))
        ax.set_xlabel(x)
    ax.set_ylabel("test accuracy (%), mean ± sd over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)


START, END = "<!-- results: written by `involution study`, do not edit by hand -->", "<!-- end of results -->"


def results_block(study: Any, rows: Sequence[dict[str, Any]], command: str) -> str:
    """The results block of ``NAME.md``, markers included: plot, table, command and compute.

    It is a function of the study, its results and the command only, so a committed report can be regenerated
    from ``results.jsonl`` and compared.
    """
    summary = summarize(rows)
    hours = sum(r["wall_s"] for r in rows) / 3600
    seeds = sorted({r["seed"] for r in rows})
    compute = (f"Compute: {len(rows)} training runs (seeds {', '.join(map(str, seeds))}), {hours:.2f} hours of "
               "wall-clock time on 2 CPU cores.")
    if study.reference_of:
        m = family_size(summary, study.reference_of)
        compute += (
            " Each arm is compared with its reference arm by Welch's t-test on the per-seed test accuracies: the "
            "difference in points with its 95% confidence interval (t quantile at the Welch-Satterthwaite degrees "
            f"of freedom), the two-sided p-value, and the p-value after Holm's correction across the {m} "
            f"comparison{'s' if m != 1 else ''} of this study. A difference is called resolved only at "
            f"p_Holm < {ALPHA:g}; otherwise it is \"{NOT_RESOLVED}\". The ± in the accuracy column is the standard "
            "deviation over seeds."
        )
    return "\n".join([
        START,
        f"![{study.name}]({study.name}.png)",
        "",
        markdown_table(summary, study.x, study.reference_of, study.percent),
        "",
        f"Command: `{command}`  ",
        compute,
        END,
    ])


def csv_rows(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary entries with list values (the per-seed accuracies and seeds) written as JSON arrays."""
    return [{k: json.dumps(v) if isinstance(v, list) else v for k, v in entry.items()} for entry in summary]


def write_report(study: Any, rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, command: str) -> dict[str, Path]:
    """``NAME.md`` (table, plot, command, compute), ``NAME.png``, ``NAME_summary.csv`` / ``.json`` in ``out_dir``.

    An existing ``NAME.md`` keeps everything outside its results block (the question, the conclusion written from
    the numbers); only the block between the markers is replaced (by :func:`results_block`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    paths = {
        "csv": write_csv(out_dir / f"{study.name}_summary.csv", csv_rows(summary)),
        "json": write_json(out_dir / f"{study.name}_summary.json", summary),
    }
    paths["png"] = plot_summary(summary, out_dir / f"{study.name}.png", study.question, study.x, study.log_x)
    block = results_block(study, rows, command)
    path = out_dir / f"{study.name}.md"
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        text = old[: old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        text = f"# Study: {study.question}\n\n{block}\n"
    write_text_atomic(path, text)
    paths["md"] = path
    return paths
