"""The seam between the engine and its tasks: typed records instead of the loop, no per-run state on a task,
declared capabilities, one classifier preparation for images and clips."""

import pytest
import torch
from torch import nn

from involution.tasks.classification import TrainConfig
from involution.tasks.classification.config import resolve as resolve_train
from involution.tasks.classification.task import ClassificationTask
from involution.tasks.detection import DetectionTask
from involution.tasks.engine.capabilities import Predicts, predictor
from involution.tasks.engine.distributed import DistInfo
from involution.tasks.engine.run_config import RunPlan
from involution.tasks.engine.task import ModelSetup
from involution.tasks.segmentation import SegmentationTask
from involution.tasks.video import VideoConfig, VideoTask
from involution.tasks.video.config import resolve as resolve_video


def test_prediction_is_a_declared_capability():
    assert isinstance(predictor(DetectionTask()), Predicts)
    assert isinstance(predictor(SegmentationTask()), Predicts)
    with pytest.raises(TypeError, match="classify task does not predict"):
        predictor(ClassificationTask())


@pytest.mark.parametrize(("task", "config"), [(ClassificationTask(), resolve_train(TrainConfig(sync_bn=True))),
                                              (VideoTask(), resolve_video(VideoConfig(sync_bn=True)))])
def test_sync_bn_needs_gpus_for_images_and_clips(task, config):
    """One preparation for both classifiers: the --sync-bn check cannot drift between them."""
    setup = ModelSetup(nn.Sequential(nn.BatchNorm2d(2)))
    with pytest.raises(ValueError, match="--sync-bn needs GPUs"):
        task.prepare_model(setup, config, torch.device("cpu"), DistInfo(rank=0, world_size=2))


def test_prepare_model_returns_its_choices_and_keeps_no_state():
    task = VideoTask()
    config = resolve_video(VideoConfig(channels_last=True, compile=True))
    model = nn.Conv3d(1, 2, 3)
    setup = task.prepare_model(ModelSetup(model, macs=7), config, torch.device("cpu"), DistInfo())
    assert setup.channels_last and setup.macs == 7 and setup.compile_backend == "inductor"
    assert setup.optimizer == "sgd" and setup.nesterov and isinstance(setup.criterion, nn.CrossEntropyLoss)
    assert setup.model.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert vars(task) == {}  # nothing of the run is kept on the task


def test_run_plan_names_an_option_left_open():
    with pytest.raises(ValueError, match="--epochs was left open"):
        RunPlan.of(TrainConfig())
    plan = RunPlan.of(resolve_train(TrainConfig()))
    assert plan.epochs >= 1 and plan.schedule == "cosine"
