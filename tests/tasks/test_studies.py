import json
import math

import pytest

from involution.cli import main
from involution.tasks.studies import STUDIES, Cell, StudyOptions, read_results, run_cells, run_study
from involution.tasks.studies import runner as runner_module
from involution.tasks.studies.report import difference, markdown_table, summarize

QUICK = StudyOptions(quick=True)


def _row(variant, group, acc, seed=0):
    return {"variant": variant, "group": group, "seed": seed, "test_acc": acc, "seconds_per_step": 0.01,
            "params": 1000, "macs": 2_000_000, "wall_s": 1.0, "key": f"{variant}{group}{seed}"}


def test_every_study_has_quick_cells_and_shared_baselines_train_once():
    keys = {name: {c.key for c in study.cells(QUICK)} for name, study in STUDIES.items()}
    assert set(STUDIES) == {"data_regime", "width", "components", "ablations", "position"}
    assert all(keys.values())
    # the plain RedNet cell is the same run in the components, ablations and position studies
    assert keys["components"] & keys["ablations"] & keys["position"]
    full = {name: study.cells(StudyOptions(data_dir="x")) for name, study in STUDIES.items()}
    assert {c.seed for c in full["data_regime"]} == {0, 1, 2, 3, 4}
    # the cells a conclusion hangs on (1% and 100%) run 5 seeds, the others 3
    assert {c.group for c in full["data_regime"] if c.seed >= 3} == {0.01, 1.0}
    assert {c.group for c in full["data_regime"]} == {0.01, 0.05, 0.2, 1.0}
    five = {name: {(c.variant, c.group) for c in cells if c.seed == 4} for name, cells in full.items()}
    assert {g for _, g in five["width"]} == {0.5} and not five["position"]
    assert {g for _, g in five["components"]} == {"depthwise", "static_shared", "dynamic", "involution"}
    assert five["ablations"] == {("channels per group", g) for g in (4, 8, 16, 4096)} | {
        ("reduction ratio r", 4), ("reduction ratio r", 8), ("kernel size K", 7)}
    assert all(c.train["data"] == "fashion-mnist" for cells in full.values() for c in cells)


def test_cell_key_ignores_labels_and_where_the_data_lives():
    a = Cell("A", 1, 0, {"data": "digits", "epochs": 1, "data_dir": "/x"})
    b = Cell("B", 2, 0, {"data": "digits", "epochs": 1, "data_dir": "/y"})
    c = Cell("A", 1, 1, {"data": "digits", "epochs": 1})
    assert a.key == b.key and a.key != c.key and a.dirname == b.dirname


def test_runner_appends_each_cell_and_resumes(tmp_path, monkeypatch):
    cells = STUDIES["position"].cells(QUICK)
    rows = run_cells(cells, tmp_path, progress=False)
    assert len(rows) == len(cells) == 2
    assert all(0 <= r["test_acc"] <= 1 and r["params"] > 0 and r["macs"] > 0 and r["steps"] > 0 for r in rows)
    # coordinate channels add generator inputs, so the two arms differ in parameters
    assert rows[0]["params"] != rows[1]["params"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(runner_module, "train", no_training)
    assert len(run_cells(cells, tmp_path, progress=False)) == 2
    monkeypatch.undo()

    # a kill in the middle of writing leaves a torn line: it is ignored and only that cell reruns
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    assert len(read_results(tmp_path)) == 1
    trained = []
    real_train = runner_module.train
    monkeypatch.setattr(runner_module, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    assert len(run_cells(cells, tmp_path, progress=False)) == 2
    assert trained == [1]


def test_summary_verdicts_and_percent_rows():
    rows = [_row("A", 0.05, a, s) for s, a in enumerate((0.80, 0.81, 0.79))]
    rows += [_row("B", 0.05, a, s) for s, a in enumerate((0.70, 0.71, 0.69))]
    rows += [_row("C", 0.05, a, s) for s, a in enumerate((0.805, 0.795, 0.80))]
    rows += [_row("D", 0.05, 0.9)]
    summary = summarize(rows)
    a, b, c, d = summary
    assert a["seeds"] == 3 and math.isclose(a["acc_mean"], 0.80) and math.isclose(a["acc_std"], 0.01)
    assert a["accs"] == [0.80, 0.81, 0.79] and a["seed_ids"] == [0, 1, 2]
    test = difference(b, a)
    assert math.isclose(test["diff"], -10.0) and test["p"] < 0.001 and test["ci_high"] < 0
    assert difference(c, a)["p"] > 0.5 and difference(c, a)["ci_low"] < 0 < difference(c, a)["ci_high"]
    assert difference(d, a) is None, "one seed: no test"
    table = markdown_table(summary, "fraction", lambda v, g: ("A", g), percent=True)
    assert "| 5% | B |" in table and "reference" in table and "p (Holm)" in table
    assert "resolved: lower than reference" in table and "not resolved at this budget" in table
    assert "no test: fewer than 2 seeds a side" in table
    assert "within noise" not in table and "beyond noise" not in table


def test_study_cli_quick_writes_report(tmp_path, capsys):
    out, report = tmp_path / "cells", tmp_path / "report"
    assert main(["study", "data_regime", "--quick", "--out", str(out), "--report-dir", str(report),
                 "--no-progress"]) == 0
    text = (report / "data_regime.md").read_text()
    assert "| 50% |" in text and "| 100% |" in text and "involution study data_regime --quick" in text
    assert (report / "data_regime.png").stat().st_size > 1000
    summary = json.loads((report / "data_regime_summary.json").read_text())
    assert len(summary) == 6
    assert "6/6 cells finished" in capsys.readouterr().out
    # a conclusion written under the results survives the next report; the results block is rewritten
    md = report / "data_regime.md"
    md.write_text(md.read_text().replace("| 50% |", "| stale |") + "\n## Conclusion\nhand-written\n")
    assert main(["study", "data_regime", "--quick", "--out", str(out), "--report-dir", str(report),
                 "--report-only"]) == 0
    text = md.read_text()
    assert "hand-written" in text and "| stale |" not in text and "| 50% |" in text
    # the results travel with the report: a fresh checkout (another --out) counts them as done
    capsys.readouterr()
    assert main(["study", "data_regime", "--quick", "--out", str(tmp_path / "fresh"), "--report-dir", str(report),
                 "--no-progress"]) == 0
    assert "6/6 cells finished" in capsys.readouterr().out
    assert not (tmp_path / "fresh" / "cells").exists(), "nothing was trained again"
    # the full study without data is refused with what to pass; an unknown study names the known ones
    assert main(["study", "width", "--out", str(out)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["study", "nope", "--quick"]) == 2
    assert "data_regime" in capsys.readouterr().err


def test_report_only_trains_nothing(tmp_path):
    result = run_study("position", tmp_path, QUICK, train_missing=False, progress=False)
    assert result["rows"] == [] and result["cells"] == 2
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("name", ["width", "components", "ablations"])
def test_quick_studies_run(tmp_path, name):
    result = run_study(name, tmp_path, QUICK, progress=False)
    assert len({r["key"] for r in result["rows"]}) == result["cells"]
    assert result["paths"]["md"].is_file()
