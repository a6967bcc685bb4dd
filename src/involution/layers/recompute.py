"""Activation recomputation (``torch.utils.checkpoint``) that leaves BatchNorm's running statistics alone.

A checkpointed module runs its forward twice when gradients are taken: once in the forward pass, again in the
backward. In training mode each BatchNorm inside would then fold the same batch into its running mean and variance
twice. Here the recomputation runs with every such BatchNorm's momentum at 0 (the running statistics stay as
they are; the batch statistics still normalise), so a checkpointed model trains exactly like one that is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute"]


def _batches_tracked(norm: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """The batch counter of a norm that tracks running statistics (a buffer then: None only without them)."""
    assert norm.num_batches_tracked is not None
    return norm.num_batches_tracked


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, _batches_tracked(m).clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            _batches_tracked(m).copy_(tracked)


def recompute(module: nn.Module, *args: Any) -> Tensor:
    """``module(*args)``, keeping only ``args`` for the backward pass, which runs the module again.

    Non-reentrant ``torch.utils.checkpoint``; BatchNorm running statistics are updated once, as without it. Under
    ``torch.compile`` the module is simply called: the compiler's own partitioner decides what to recompute.
    """
    if torch.compiler.is_compiling():
        return module(*args)
    return checkpoint(
        module, *args, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _running_stats_frozen(module)),
    )
