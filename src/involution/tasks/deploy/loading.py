"""The model to export: a registry name, optionally with a checkpoint, or a module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn


def load_export_model(
    model_or_name: nn.Module | str, checkpoint: str | os.PathLike | None = None, num_classes: int | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """The model to export, in eval mode: a registry name (built, optionally from ``checkpoint``) or a module.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: unknown model name (with close matches); ``num_classes``/``model_kwargs`` given with a module.
    """
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} does not exist (or is not a file); give the path of an official mmcls "
            ".pth or of a safetensors checkpoint written by this library"
        )
    if isinstance(model_or_name, str):
        from ...models import create_model, load_model
        from ...models.checkpoint import FORMAT, read_checkpoint

        kwargs = dict(model_kwargs)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        recorded = read_checkpoint(checkpoint)[1] if checkpoint is not None else {}
        if recorded.get("format") == FORMAT and recorded.get("model") == model_or_name:
            # This library's checkpoint records the constructor arguments (class count, width ...): rebuild from
            # them, so a fine-tuned 10-class model is not exported with a re-initialised 1000-class head.
            return load_model(checkpoint, **kwargs).eval()
        return create_model(model_or_name, checkpoint=checkpoint, **kwargs).eval()
    if not isinstance(model_or_name, nn.Module):
        raise TypeError(f"model_or_name must be a registry name or an nn.Module, got {type(model_or_name).__name__}")
    if num_classes is not None or model_kwargs:
        raise ValueError("num_classes and model arguments apply to a model name, not to a model instance")
    if checkpoint is not None:
        from ...models import load_checkpoint

        load_checkpoint(model_or_name, checkpoint)
    return model_or_name.eval()

