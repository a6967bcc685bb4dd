"""Architectures built on the involution layers: the RedNet family, ResNet baselines, the registry, checkpoints.

>>> from involution.models import create_model
>>> model = create_model("rednet26", num_classes=10)                  # an ImageNet-style classifier
>>> tiny = create_model("rednet26_small", num_classes=10, width=0.25)  # for 32x32 images
>>> backbone = create_model("rednet50", features_only=True)          # 4 maps, strides 4/8/16/32
>>> detector = create_model("fasterrcnn_rednet50_fpn", num_classes=80)  # torchvision Faster R-CNN
>>> seg = create_model("fpn_rednet50", num_classes=19)                # Semantic FPN, {"out": logits}
"""

import importlib.util
import warnings

from . import detection, rednet, resnet, segmentation, video  # noqa: F401  (registers the models; the dense ones after rednet, which they build on)
from ._base import FeatureInfo, ResidualNet
from ._safetensors import read_safetensors  # public: the trainer reads its own files' metadata with it
from .checkpoint import LoadReport, apply_state_dict, load_checkpoint, read_checkpoint, save_checkpoint
from .flops import FlopReport, count_flops, count_params, mmcv_style_macs, summary
from .rednet import RedNet, RedNetBottleneck
from .pdparams import read_pdparams
from .rednet_convert import (
    convert_checkpoint,
    official_to_ours,
    ours_to_official,
    ours_to_paddleclas,
    paddleclas_to_ours,
)
from .registry import create_model, is_model, list_models, load_model, model_entrypoint, register_model
from .replace_convs import involutionizable, involutionize
from .resnet import ResNet

if importlib.util.find_spec("timm") is not None:  # optional: the RedNets in timm's registry too
    try:
        from . import timm_registry  # noqa: F401
    except ImportError as err:  # e.g. a timm older than 1.0: involution itself still works
        warnings.warn(f"timm is installed but the RedNets could not be registered with it: {err}", stacklevel=2)

__all__ = [
    "FeatureInfo",
    "LoadReport",
    "RedNet",
    "RedNetBottleneck",
    "ResNet",
    "ResidualNet",
    "apply_state_dict",
    "convert_checkpoint",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "model_entrypoint",
    "official_to_ours",
    "ours_to_official",
    "ours_to_paddleclas",
    "paddleclas_to_ours",
    "read_pdparams",
    "read_checkpoint",
    "read_safetensors",
    "register_model",
    "save_checkpoint",
    "FlopReport",
    "count_flops",
    "count_params",
    "involutionizable",
    "involutionize",
    "mmcv_style_macs",
    "summary",
]
