"""The studies' statistics (Welch's t-test, Holm's correction) and the committed reports regenerating exactly."""

import csv
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from involution.tasks.studies import STUDIES, StudyOptions, labelled_results, run_study, summarize
from involution.tasks.studies.report import (
    END, NOT_RESOLVED, START, comparisons, csv_rows, holm, markdown_table, results_block, welch,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies"


def test_holm_hand_computed():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04, raised to 0.06: monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.9, 0.02]) == pytest.approx([0.6, 0.9, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0], "capped at 1"
    assert holm([0.04]) == [0.04] and holm([]) == []
    # a comparison without a p-value is no part of the family
    adjusted = holm([0.01, float("nan"), 0.04])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_holm_is_monotone_bounded_and_no_smaller_than_raw():
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 12):
        p = list(rng.uniform(0, 0.3, m) ** 2)
        adjusted = holm(p)
        order = np.argsort(p)
        assert all(0 <= q <= 1 for q in adjusted)
        assert all(q >= raw for q, raw in zip(adjusted, p))
        assert all(np.diff(np.array(adjusted)[order]) >= 0), "a smaller raw p never gets a larger adjusted p"
        assert min(adjusted) == pytest.approx(min(1, m * min(p))), "the smallest is Bonferroni's"


def test_welch_matches_scipy_and_the_textbook_interval():
    a, b = [81.2, 82.0, 80.9], [79.5, 80.1, 81.0, 79.9, 80.6]
    w = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w["t"] == pytest.approx(ref.statistic) and w["p"] == pytest.approx(ref.pvalue)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    diff = statistics.mean(a) - statistics.mean(b)
    half = stats.t.ppf(0.975, df) * se
    assert w["diff"] == pytest.approx(diff) and w["se"] == pytest.approx(se) and w["df"] == pytest.approx(df)
    assert w["t"] == pytest.approx(diff / se)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx((diff - half, diff + half))
    if hasattr(ref, "df"):  # scipy >= 1.11 reports both
        assert w["df"] == pytest.approx(ref.df)
        ci = ref.confidence_interval(0.95)
        assert (w["ci_low"], w["ci_high"]) == pytest.approx((ci.low, ci.high))
    # the 95% interval excludes 0 exactly when p < 0.05
    for x, y in ((a, b), ([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]), ([0.0, 0.1, 0.2], [1.0, 1.1, 1.3])):
        r = welch(x, y)
        assert (r["p"] < 0.05) == (r["ci_low"] > 0 or r["ci_high"] < 0)


def test_welch_edge_cases():
    with pytest.raises(ValueError, match="two values"):
        welch([1.0], [1.0, 2.0])
    flat = welch([1.0, 1.0], [2.0, 2.0])
    assert flat["diff"] == -1.0 and flat["se"] == 0 and math.isnan(flat["p"]) and math.isnan(flat["ci_low"])


def _arm(variant, accs):
    return [{"variant": variant, "group": 1, "seed": s, "test_acc": a, "seconds_per_step": 0.01, "params": 10,
             "macs": 10, "wall_s": 1.0} for s, a in enumerate(accs)]


def test_holm_family_is_the_whole_table():
    rows = _arm("ref", (0.80, 0.81, 0.79)) + _arm("x", (0.83, 0.84, 0.825)) + _arm("y", (0.80, 0.805, 0.795))
    summary = summarize(rows)
    comps = comparisons(summary, lambda v, g: ("ref", 1))
    raw = [comps[1]["test"]["p"], comps[2]["test"]["p"]]
    assert [comps[1]["p_holm"], comps[2]["p_holm"]] == pytest.approx(holm(raw))
    assert comps[0] == {"reference": True}
    table = markdown_table(summary, "g", lambda v, g: ("ref", 1))
    x_line = next(line for line in table.splitlines() if "| x |" in line)
    t = comps[1]["test"]
    assert f"{t['diff']:+.2f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] | {t['p']:.3f} | {comps[1]['p_holm']:.3f} |" \
        in x_line
    assert comps[2]["verdict"] == NOT_RESOLVED


def _committed_command(text: str) -> str:
    match = re.search(r"^Command: `(.*)`  $", text, re.M)
    assert match, "the results block names its command"
    return match.group(1)


def check_regenerable(report_dir: Path, name: str) -> None:
    """The report of study ``name`` in ``report_dir`` is exactly what its results.jsonl gives: the results block of
    NAME.md (with the command it names) and NAME_summary.json / .csv."""
    study = STUDIES[name]
    rows = labelled_results(study.cells(StudyOptions(data_dir="x")), report_dir)
    assert rows, f"no results of {name} in {report_dir}"
    text = (report_dir / f"{name}.md").read_text()
    assert START in text and END in text
    committed = text[text.index(START): text.index(END) + len(END)]
    assert committed == results_block(study, rows, _committed_command(committed))
    summary = summarize(rows)
    expected_json = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    assert (report_dir / f"{name}_summary.json").read_text() == expected_json
    with open(report_dir / f"{name}_summary.csv", newline="") as f:
        committed_csv = list(csv.DictReader(f))
    assert committed_csv == [{k: "" if v is None else str(v) for k, v in row.items()} for row in csv_rows(summary)]


@pytest.mark.parametrize("name", list(STUDIES))
def test_committed_study_reports_regenerate_from_results(name):
    check_regenerable(DOCS, name)


@pytest.mark.parametrize("name", ["position", "width"])
def test_report_only_from_the_report_dir_is_regenerable(tmp_path, name):
    # a fresh --out with no results: the report directory's results.jsonl is all there is
    shutil.copy(DOCS / "results.jsonl", tmp_path / "results.jsonl")
    result = run_study(name, tmp_path / "out", StudyOptions(), report_dir=tmp_path,
                       command=f"involution study {name}", progress=False, train_missing=False)
    assert result["rows"] and not (tmp_path / "out" / "cells").exists()
    check_regenerable(tmp_path, name)
    assert "Holm's correction across the" in (tmp_path / f"{name}.md").read_text()
