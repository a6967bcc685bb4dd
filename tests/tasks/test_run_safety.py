"""The run directory's lifecycle through the command line (issue 26): a fresh run never writes over an earlier run
or a user's files unless told to (``--overwrite``), SIGTERM saves as Ctrl-C does, ``--resume`` never shortens a
history and says when it re-plans the schedule, and an ``--out`` that is a file is a one-line error."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env, wait_for

from involution.cli import main
from involution.tasks.engine.state import load_training_state

TINY = ["--model-kwargs", "width=0.125", "--no-progress"]  # the trained_run fixture's model (conftest.tiny)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def finished_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of a finished 3-epoch run without its resume state (the issue's "refcopy": last.pt removed)."""
    copy = shutil.copytree(trained_run, tmp_path / "refcopy")
    (copy / "checkpoints" / "last.pt").unlink()
    return copy


# -- a fresh run refuses an earlier run's directory ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["train"], ["train-video"], ["detect", "train"], ["segment", "train"]],
                         ids=" ".join)
def test_a_fresh_run_refuses_a_finished_run_and_changes_nothing(command, finished_copy, capsys):
    before = snapshot(finished_copy)
    rc = main([*command, "--epochs", "1", "--out", str(finished_copy), "--no-progress"])
    err = one_line_error(capsys)
    assert rc == 2, err
    assert str(finished_copy) in err and "a run (finished, 3 epoch(s)" in err and "config.json" in err, err
    assert "--resume" in err and "--overwrite" in err, err
    assert snapshot(finished_copy) == before, "a refused run changes nothing (and leaves no lock file)"


def test_overwrite_replaces_the_earlier_run_and_says_what_it_replaces(finished_copy, capsys):
    old_events = sorted((finished_copy / "tb").iterdir())
    assert old_events
    rc = main(["train", "--epochs", "1", *TINY, "--out", str(finished_copy), "--overwrite"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    said = [line for line in printed.splitlines() if line.startswith("--overwrite")]
    assert len(said) == 1 and "replacing a run (finished, 3 epoch(s); config.json" in said[0], printed
    metrics = json.loads((finished_copy / "metrics.json").read_text())
    assert metrics["status"] == "finished" and [row["epoch"] for row in metrics["history"]] == [1]
    assert json.loads((finished_copy / "config.json").read_text())["epochs"] == 1
    assert not any(path.exists() for path in old_events), "the earlier run's TensorBoard events are gone"
    assert load_training_state(finished_copy / "checkpoints" / "last.pt")["epoch"] == 1


def test_out_dot_refuses_to_write_over_the_users_own_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text('{"my": "settings"}\n')
    (tmp_path / "provenance.json").write_text('{"my": "notes"}\n')
    (tmp_path / "data.csv").write_text("a,b\n")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--epochs", "1", *TINY, "--out", "."])
    err = one_line_error(capsys)
    assert rc == 2 and "config.json, provenance.json" in err and "--overwrite" in err and "--resume" in err, err
    assert snapshot(tmp_path) == before, "the user's files untouched, no lock file left"


def test_resume_and_overwrite_together_are_refused(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    before = snapshot(run)
    rc = main(["train", "--resume", "--overwrite", "--out", str(run), "--no-progress"])
    err = one_line_error(capsys)
    assert rc == 2 and "--resume" in err and "--overwrite" in err and "one of them" in err, err
    assert snapshot(run) == before


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/run"])
def test_an_out_that_is_a_file_is_a_one_line_error(out, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    rc = main(["train", "--epochs", "1", *TINY, "--out", str(tmp_path / out)])
    err = one_line_error(capsys)
    assert rc == 2 and str(notes) in err and "a file, not a directory" in err and "Errno" not in err, err
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# -- --resume with another --epochs -------------------------------------------------------------------------------


def test_resume_never_shortens_a_history_and_says_when_it_extends_the_plan(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    before = snapshot(run)
    rc = main(["train", "--resume", "--epochs", "2", "--out", str(run), "--no-progress"])
    err = one_line_error(capsys)
    assert rc == 2 and "--epochs 2" in err and "3 epoch(s) done" in err and "--epochs 3 or more" in err, err
    assert snapshot(run) == before, "config.json keeps its 3 epochs beside the 3-epoch history"

    history = json.loads((run / "metrics.json").read_text())["history"]
    rc = main(["train", "--resume", "--epochs", "4", "--out", str(run), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    said = [line for line in printed.splitlines() if line.startswith("--epochs 4")]
    assert len(said) == 1, printed
    assert "instead of the run's 3: the cosine learning-rate schedule is re-planned over 4 epochs" in said[0], said
    lr = re.search(r"\(lr (\S+) -> (\S+)\)$", said[0])
    assert lr and float(lr[1]) == 0.0 < float(lr[2]), "the finished cosine is at 0; the new plan's lr is not"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"][:3] == history and [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][3]["lr"] == 0.0, "the re-planned cosine ends at 0 after epoch 4"
    assert json.loads((run / "config.json").read_text())["epochs"] == 4


# -- SIGTERM saves like Ctrl-C ------------------------------------------------------------------------------------


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_training_state(run / "checkpoints" / "last.pt")["model"]


def test_sigterm_saves_exits_143_and_resume_finishes_exactly(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    # trained_run is the same 3-epoch run, uninterrupted (same threads: the same float rounding)
    threads = json.loads((trained_run / "provenance.json").read_text())["threads"]
    cli = [sys.executable, "-m", "involution", "train"]
    cmd = [*cli, "--epochs", "3", *TINY, "--threads", str(threads), "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                            start_new_session=True)
    try:
        wait_for(out / "metrics.json", proc)  # the first epoch is done: training is under way, two epochs to go
        # to the process group, as torchrun's agent and `kill -TERM -PGID` send it: the data-loader worker too
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    said = [line for line in output.splitlines() if "SIGTERM" in line]
    assert said == ["SIGTERM: stopping after this step and saving a checkpoint (SIGTERM again to abort)"], output
    assert "Traceback" not in output and "continue with: involution train --resume" in output, output
    state = load_training_state(out / "checkpoints" / "last.pt")
    assert 1 <= state["epoch"] < 3 and json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    # a resume that would end before the epochs begun is refused, changing nothing
    before = snapshot(out)
    assert main(["train", "--resume", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert f"has {state['epoch']} epoch(s) done" in err and "a resumed run cannot end before them" in err, err
    assert snapshot(out) == before
    done = subprocess.run([*cli, "--resume", "--out", str(out), "--no-progress"], capture_output=True, text=True,
                          env=child_env(), timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ours, reference = (json.loads((run / "metrics.json").read_text()) for run in (out, trained_run))
    assert ours["status"] == "finished"
    for key in ("train_loss", "val_acc"):
        assert [row[key] for row in ours["history"]] == [row[key] for row in reference["history"]], key
    a, b = _weights(out), _weights(trained_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_stop_signal_aborts_without_saving():
    from involution.tasks.engine.runtime import StopFlag

    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the handler outside StopFlag")

    previous = signal.signal(signal.SIGTERM, unhandled)  # (and the default action would end the tests)
    try:
        flag = StopFlag(announce=False)
        with flag:
            signal.raise_signal(signal.SIGTERM)
            assert flag.requested and flag.signum == signal.SIGTERM
            with pytest.raises(SystemExit) as exit_:
                signal.raise_signal(signal.SIGTERM)
            assert exit_.value.code == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled, "the handler is put back"
    finally:
        signal.signal(signal.SIGTERM, previous)
