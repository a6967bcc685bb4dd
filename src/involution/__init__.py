"""involution: the involution operator (Li et al., CVPR 2021) and the RedNet family for PyTorch.

>>> import torch, involution
>>> layer = involution.Involution2d(64, kernel_size=7)
>>> model = involution.create_model("rednet26", num_classes=10)
"""

from ._version import __version__
from .layers import Involution1d, Involution2d, Involution3d
from .models import create_model, list_models
from .ops import involution1d, involution2d, involution3d, use_backend

__all__ = [
    "Involution1d",
    "Involution2d",
    "Involution3d",
    "__version__",
    "create_model",
    "involution1d",
    "involution2d",
    "involution3d",
    "list_models",
    "use_backend",
]
