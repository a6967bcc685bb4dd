"""Clip classification: the direction of an item moving across a canvas, learnt by a 3-D network.

>>> from involution.tasks.video import VideoConfig, train
>>> result = train(VideoConfig(model="video_resnet_tiny", epochs=1), out="runs/video")  # moving digits
>>> result.metrics["test_acc"]
"""

from .config import RECIPE, VideoConfig, resolve
from .data import Clips, ClipSpec, load_clips
from .task import VideoTask, resume_config, train

__all__ = ["RECIPE", "ClipSpec", "Clips", "VideoConfig", "VideoTask", "load_clips", "resolve", "resume_config",
           "train"]
