"""Per-sample seeding of training augmentation, one scheme for every task: a sample's draws in an epoch come from
a 64-bit hash of ``(seed, epoch, index)`` (splitmix64, chained), whatever worker loads it and whether the run was
resumed. :func:`sample_hashes` hashes a batch (classification's in-memory shifts and flips use the bits directly);
:func:`sample_seed` seeds a generator for one sample (torchvision transforms, the dense tasks' paired transforms)."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def sample_hashes(seed: int, epochs: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 per sample from ``(seed, epoch, index)``: ``(N,)`` epochs and indices -> ``(N,)``."""
    h = _splitmix64(np.full(len(indices), seed, dtype=np.uint64))
    h = _splitmix64(h ^ np.asarray(epochs, dtype=np.int64).astype(np.uint64))
    return _splitmix64(h ^ np.asarray(indices, dtype=np.int64).astype(np.uint64))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (in ``[0, 2**64)``, as ``torch.Generator.manual_seed`` takes) of one sample in one epoch."""
    return int(sample_hashes(seed, np.array([epoch]), np.array([index]))[0])
