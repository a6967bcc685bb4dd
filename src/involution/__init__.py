"""involution: the involution operator (Li et al., CVPR 2021) and the RedNet family for PyTorch."""

from .layers import Involution2d
from .ops import involution2d, use_backend

__version__ = "0.1.0"

__all__ = ["Involution2d", "__version__", "involution2d", "use_backend"]
