"""The model to export: a registry name, optionally with a checkpoint, the model a checkpoint records, or a module."""

from __future__ import annotations

import os
from typing import Any

from torch import nn


def load_export_model(
    model_or_name: nn.Module | str | None, checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None, **model_kwargs: Any,
) -> nn.Module:
    """The model to export, in eval mode: a registry name (built, optionally from ``checkpoint``), None (the model
    a checkpoint records: a run directory, or a file this library wrote), or a module.

    A checkpoint this library wrote rebuilds its recorded model with its recorded arguments (class count, width
    ...) and preprocessing (input size), so a fine-tuned 10-class model is not exported with a re-initialised
    1000-class head (:func:`~involution.tasks.engine.recorded.read_recorded`).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist (or is a folder without a checkpoint).
        ValueError: unknown model name (with close matches); no name and a checkpoint that records none; a name,
            ``num_classes`` or argument contradicting what the checkpoint records; ``num_classes`` /
            ``model_kwargs`` given with a module.
    """
    if model_or_name is None or isinstance(model_or_name, str):
        if checkpoint is not None:
            from ..engine.recorded import read_recorded

            return read_recorded(checkpoint, model_or_name, num_classes, model_kwargs).build()
        if model_or_name is None:
            raise ValueError("nothing to export: give a model name (--model) or a checkpoint that records its model "
                             "(--checkpoint RUN_DIR)")
        from ...models import create_model

        kwargs = dict(model_kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
        return create_model(model_or_name, **kwargs).eval()
    if not isinstance(model_or_name, nn.Module):
        raise TypeError(f"model_or_name must be a registry name or an nn.Module, got {type(model_or_name).__name__}")
    if num_classes is not None or model_kwargs:
        raise ValueError("num_classes and model arguments apply to a model name, not to a model instance")
    if checkpoint is not None:
        from ...models import load_checkpoint
        from ..engine.run_dir import resolve_checkpoint

        load_checkpoint(model_or_name, resolve_checkpoint(checkpoint))
    return model_or_name.eval()
