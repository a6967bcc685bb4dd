"""Deterministic stand-in weights for the official-parity test (no official code here, only numbers).

``seeded_state_dict`` turns a list of (key, shape) into tensors drawn in sorted key order from one seeded
generator. The reference logits in ``data/rednet_official_parity.json`` were produced by running the official
mmcls RedNet (outside this repository) on exactly these tensors, saved in the official checkpoint layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def seeded_state_dict(shapes: dict[str, list[int]], seed: int = 2021) -> dict[str, torch.Tensor]:
    """Every parameter and BN statistic random (BN gammas too, so every branch contributes)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith(("running_mean", ".bias")):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("running_var") or len(shape) == 1:  # BN variances and gammas
            out[key] = 0.75 + 0.5 * torch.rand(shape, generator=g)
        else:  # conv / linear weights, unit gain; the involution kernel generators a K=7 window smaller
            fan_in = math.prod(shape[1:])
            scale = 1.0 / math.sqrt(fan_in)
            if key.endswith("conv2.conv.weight"):
                scale /= 7.0
            out[key] = scale * torch.randn(shape, generator=g)
    return out


def parity_input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64)


def load_reference() -> dict:
    return json.loads((DATA / "rednet_official_parity.json").read_text())
