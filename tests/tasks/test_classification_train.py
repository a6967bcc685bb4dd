import json
import math

import pytest
import torch
from conftest import StopAfter, tiny

from involution.models import load_model
from involution.tasks.classification import NonFiniteLossError, resume_config, train
from involution.tasks.engine.state import load_training_state


def test_run_directory_holds_everything(tmp_path):
    result = train(tiny(epochs=2), out=tmp_path / "run", progress=False)
    run = result.run_dir
    assert result.status == "finished"
    for name in ("config.json", "provenance.json", "metrics.json", "metrics.csv", "curves.png",
                 "checkpoints/last.pt", "checkpoints/best.safetensors", "checkpoints/last.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and 0 <= metrics["test_acc"] <= 1 and metrics["test_count"] == 360
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    for key in ("train_loss", "val_acc", "lr", "time"):
        assert all(math.isfinite(row[key]) for row in metrics["history"]), key
    assert metrics["history"][-1]["lr"] == 0.0, "cosine schedule ends at 0"
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss") and len(csv_lines) == 3
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["threads"] >= 1 and "torch" in prov["versions"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "rednet26_small" and config["lr"] > 0
    model = load_model(run / "checkpoints" / "last.safetensors")
    assert model.num_classes == 10


def _weights(run):
    return load_training_state(run / "checkpoints" / "last.pt")["model"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full = train(tiny(epochs=2), out=tmp_path / "full", progress=False)
    # stop in the middle of epoch 1 (step 7 of 20), then resume to the end
    part = train(tiny(epochs=2), out=tmp_path / "part", progress=False, stop_flag=StopAfter(7))
    assert part.status == "interrupted"
    state = load_training_state(tmp_path / "part" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 7)
    resumed = train(resume_config(tmp_path / "part"), out=tmp_path / "part", resume=True, progress=False)
    assert resumed.status == "finished"
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ha, hb = full.metrics["history"], resumed.metrics["history"]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_acc"] for r in ha] == [r["val_acc"] for r in hb]
    assert full.metrics["test_acc"] == resumed.metrics["test_acc"]


def test_resume_at_an_epoch_boundary_and_extending_epochs(tmp_path):
    train(tiny(epochs=1), out=tmp_path / "run", progress=False)
    more = train(resume_config(tmp_path / "run", {"epochs": 2}), out=tmp_path / "run", resume=True, progress=False)
    assert [row["epoch"] for row in more.metrics["history"]] == [1, 2]


def test_resume_refuses_other_settings_and_bad_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(tiny(epochs=1), out=run, progress=False)
    with pytest.raises(ValueError, match="model: run has 'rednet26_small', asked 'resnet26_small'"):
        resume_config(run, {"model": "resnet26_small"})
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(epochs=1), out=run, progress=False)
    # a checkpoint of another width must not be loaded into this model
    other = tmp_path / "other"
    train(tiny(epochs=1, model_kwargs={"width": 0.25}), out=other, progress=False)
    (run / "checkpoints" / "last.pt").write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(ValueError, match="holds rednet26_small"):
        train(resume_config(run), out=run, resume=True, progress=False)
    # a truncated file is refused with its name
    data = (other / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="last.pt"):
        train(resume_config(run), out=run, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="config.json"):
        resume_config(tmp_path / "nothing-here")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import involution.tasks.classification.task as train_module

    class PoisonedLoss(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, target):
            PoisonedLoss.calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if PoisonedLoss.calls > 25 else loss

    monkeypatch.setattr(train_module.nn, "CrossEntropyLoss", PoisonedLoss)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="non-finite.*epoch 2"):
        train(tiny(epochs=2), out=run, progress=False)
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert json.loads((run / "metrics.json").read_text())["status"].startswith("stopped")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_channels_last_and_clipping(tmp_path, amp):
    result = train(tiny(amp=amp, channels_last=True, clip_grad=1.0), out=tmp_path / amp, progress=False)
    assert result.status == "finished" and math.isfinite(result.metrics["history"][0]["train_loss"])
    state = load_training_state(tmp_path / amp / "checkpoints" / "last.pt")
    assert state["scaler"] == {} or "scale" in state["scaler"]
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0


def test_compiled_model_saves_plain_keys(tmp_path):
    result = train(tiny(compile=True, compile_backend="aot_eager"), out=tmp_path / "c", progress=False)
    assert result.status == "finished"
    keys = _weights(tmp_path / "c").keys()
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)
    load_model(tmp_path / "c" / "checkpoints" / "best.safetensors")


@pytest.mark.parametrize("given", ["checkpoints/last.safetensors", "."], ids=["file", "run-dir"])
def test_fine_tuning_starts_from_a_checkpoint(tmp_path, trained_run, given):
    source = trained_run / given  # a run directory: its best weights
    result = train(tiny(checkpoint=str(source), lr=1e-9, warmup_epochs=0), out=tmp_path / "ft", progress=False)
    start = load_model(source if source.is_file() else trained_run / "checkpoints" / "best.safetensors").state_dict()
    after = _weights(tmp_path / "ft")
    conv = "stem.0.conv.weight"
    assert torch.allclose(start[conv], after[conv], atol=1e-6), "a tiny lr keeps the loaded weights"
    assert result.metrics["test_acc"] > 0.2


def test_worker_processes_do_not_change_the_result(tmp_path):
    a = train(tiny(), out=tmp_path / "w0", progress=False)
    b = train(tiny(workers=2), out=tmp_path / "w2", progress=False)
    assert a.metrics["history"][0]["train_loss"] == b.metrics["history"][0]["train_loss"]
    wa, wb = _weights(tmp_path / "w0"), _weights(tmp_path / "w2")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
