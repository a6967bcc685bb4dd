"""Seeding of the paired (image, target) transforms of the dense tasks (detection, segmentation).

A :class:`PairedTransform` draws its random numbers from a generator seeded from ``(seed, epoch, key)``, where
``key`` is the sample's index in its data set (the data sets pass it), so a sample's augmentation does not depend on
which worker process loads it or on whether a run was resumed. Call :meth:`PairedTransform.set_epoch` (or the data
set's ``set_epoch``) before each epoch; with non-persistent DataLoader workers the new epoch reaches the workers.
``seed=None`` draws from torch's global RNG instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ..engine.seeding import sample_seed


class PairedTransform:
    """Base class: ``transform(image, target, key=None) -> (image, target)`` with seeded draws."""

    keyed = True

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed
        self.epoch = 0
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, key: int | None, generator: torch.Generator | None = None) -> torch.Generator | None:
        """The generator of one call: ``generator`` when the caller gives one (the training loop's
        :class:`~involution.tasks.dense.KeyedDataset` seeds it from (seed, epoch, index)); else from (seed, epoch,
        key); without a key, from a per-object call counter."""
        if generator is not None:
            return generator
        if self.seed is None:
            return None
        if key is None:
            key, self._calls = self._calls, self._calls + 1
        return torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, int(key)))

    def __call__(self, image: Any, target: Any, key: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[Any, Any]:
        raise NotImplementedError


class PairedDataset(Dataset):
    """Base of the dense data sets: items ``(image, target)`` pass last through ``transforms``, which also gets the
    sample's index when it is keyed (``keyed = True``: a :class:`PairedTransform`)."""

    transforms: Callable[..., tuple[Any, Any]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to seeded transforms (call before each epoch)."""
        set_epoch = getattr(self.transforms, "set_epoch", None)  # only seeded transforms have one
        if set_epoch is not None:
            set_epoch(epoch)

    def apply_transforms(self, image: Any, target: Any, index: int) -> tuple[Any, Any]:
        """``transforms(image, target)``, passing ``key=index`` to keyed transforms."""
        if self.transforms is None:
            return image, target
        if getattr(self.transforms, "keyed", False):
            return self.transforms(image, target, key=index)
        return self.transforms(image, target)
