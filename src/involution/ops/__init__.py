"""The involution operator: functional API, ``torch.library`` registration and backends.

>>> import torch, involution
>>> x = torch.randn(2, 32, 16, 16)
>>> w = torch.randn(2, 2, 7, 7, 16, 16)          # (N, G, Kh, Kw, Ho, Wo)
>>> involution.ops.involution2d(x, w, padding=3).shape
torch.Size([2, 32, 16, 16])
"""

from . import flops  # noqa: F401  (registers the ops' FLOP formulas with FlopCounterMode)
# argument rules the layers share with the op (public here, so no package imports ops' private modules)
from ._shapes import SPATIAL_NAMES, IntOrPair, is_channels_last, ntuple, output_size
from .backends import available_backends, backend_status, current_backends, list_backends, use_backend
from .involution2d import involution2d
from .involution_nd import involution1d, involution3d

__all__ = [
    "IntOrPair",
    "SPATIAL_NAMES",
    "available_backends",
    "backend_status",
    "current_backends",
    "involution1d",
    "involution2d",
    "involution3d",
    "is_channels_last",
    "list_backends",
    "ntuple",
    "output_size",
    "use_backend",
]
