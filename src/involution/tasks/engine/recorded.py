"""What a checkpoint records of its model and run: the one resolution behind every command that reads a checkpoint
(``eval``, ``predict``, ``visualize``, ``export``, ``convert``, ``summary``, the dense commands, ``--checkpoint``
of the train commands).

:func:`read_recorded` turns what the user gave into what to build:

- a run directory becomes its best weights (:func:`~involution.tasks.engine.run_dir.resolve_checkpoint`);
- a file this library wrote (``best.safetensors``, ``last.safetensors``, ``last.pt``) names its model, the
  model's constructor arguments (class count included) and, for a training run, its data (``data_spec``,
  ``train_config``): a model name, class count or argument the caller gives is only needed where the file does not
  record it (official mmcls and PaddleClas files, plain state dicts);
- a given value that contradicts the recorded one is refused, naming both and the fix, never silently ignored.

The file is read once (a safetensors file's metadata only; a training state whole, kept for :meth:`build`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...models.checkpoint import FORMAT as WEIGHTS_FORMAT
from ...models.checkpoint import is_torch_file, read_metadata
from ...models.checkpoint_checks import apply_data_spec, check_data_spec, check_finite
from .run_dir import CHECKPOINT_FILES, resolve_checkpoint, run_dir_of
from .state import FORMAT as TRAIN_FORMAT
from .state import load_training_state

# entries save_checkpoint writes itself (the rest of a file's metadata is what its run recorded)
_OWN_KEYS = ("format", "format_version", "model", "model_kwargs", "library_version", "pretrained_cfg", "converted_from")


@dataclass
class RecordedCheckpoint:
    """A checkpoint file and what it records (see :func:`read_recorded`).

    ``model`` / ``model_kwargs``: what to build (the recorded name and arguments, with the caller's additions);
    ``recorded``: whether the file names its model (this library's weights or training state); ``data_spec``: the
    recorded preprocessing as stored (checked when used); ``train_config``: the training run's configuration;
    ``metadata``: a safetensors file's metadata (empty for ``.pt`` files); ``state``: a training state, read once.
    """

    path: Path
    model: str | None
    model_kwargs: dict[str, Any]
    recorded: bool
    data_spec: str | Mapping[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    given: dict[str, Any] = field(default_factory=dict)  # the caller's arguments the file does not record

    @property
    def run_dir(self) -> Path:
        """Where commands write their reports and pictures by default: the run directory (or the file's folder)."""
        return run_dir_of(self.path)

    @property
    def num_classes(self) -> int | None:
        value = self.model_kwargs.get("num_classes")
        return value if isinstance(value, int) else None

    def require_model(self) -> str:
        """The model name; ValueError saying to pass ``--model`` for a file that does not record it."""
        if self.model is None:
            raise ValueError(f"{self.path} does not record its architecture: pass --model NAME (e.g. rednet50)")
        return self.model

    def checked_spec(self) -> dict[str, Any] | None:
        """The recorded data spec, every field checked (:func:`check_data_spec`); None when there is none."""
        if self.data_spec is None:
            return None
        return check_data_spec(self.data_spec, self.path, self.model_kwargs.get("in_chans"))

    def input_size(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` the run trained at (its data spec's channels and image size); None when not recorded."""
        spec = self.checked_spec()
        return None if spec is None else (spec["in_chans"], spec["image_size"], spec["image_size"])

    def data(self) -> tuple[str | None, str | None]:
        """The run's data set and data folder (``--data``, ``--data-dir``), or None where not recorded. A relative
        folder that is not found from here is taken from the folder the run was started in (its provenance)."""
        config = self.train_config or {}
        name = config.get("data")
        if name is None and self.data_spec is not None:
            name = (self.checked_spec() or {}).get("dataset") or None
        data_dir = config.get("data_dir")
        if isinstance(data_dir, str) and not Path(data_dir).is_absolute() and not Path(data_dir).exists():
            started = _started_in(self.run_dir)
            if started is not None and (started / data_dir).exists():
                data_dir = str(started / data_dir)
        return (name if isinstance(name, str) else None), (data_dir if isinstance(data_dir, str) else None)

    def build(self) -> nn.Module:
        """The model with the file's weights, in eval mode; a recorded data spec is given to its ``pretrained_cfg``
        (input size, mean, std)."""
        from ...models import create_model, load_model

        name = self.require_model()
        if self.state is not None:
            net = create_model(name, **self.model_kwargs)
            check_finite(self.state["model"], self.path)
            net.load_state_dict(self.state["model"])
            if self.data_spec is not None:
                apply_data_spec(net, self.data_spec, self.path)
        elif self.recorded:
            net = load_model(self.path, **self.given)
        else:
            net = create_model(name, checkpoint=self.path, **self.given)
        return net.eval()


WEIGHTS_FILES = ("best.safetensors", "last.safetensors")  # a run's weights, without its training state


def initial_weights(checkpoint: str | os.PathLike | None) -> Path | None:
    """The file of a train command's ``--checkpoint`` (initial weights): a run directory's best weights, or the
    file itself; None when none is given."""
    return None if checkpoint is None else resolve_checkpoint(checkpoint, WEIGHTS_FILES)


def write_weights(found: RecordedCheckpoint, dst: str | os.PathLike) -> Path:
    """The weights of a checkpoint that records its model (a run's ``best.safetensors``, ``last.pt`` ...) as one
    of this library's safetensors files at ``dst``, keeping what it records (``data_spec``, ``train_config``, a
    dense run's task and classes), so that every command reads ``dst`` as it reads the run; returns ``dst``."""
    from ..._atomic import refuse_same_file
    from ...models import save_checkpoint

    refuse_same_file(found.path, dst)
    keep: dict[str, Any] = {k: v for k, v in found.metadata.items() if k not in _OWN_KEYS}
    if found.state is not None:
        keep.update({k: v for k, v in (("data_spec", found.data_spec), ("train_config", found.train_config))
                     if v is not None})
    return save_checkpoint(found.build(), dst, metadata={**keep, "converted_from": found.path.name})


def read_recorded(
    checkpoint: str | os.PathLike,
    model: str | None = None,
    num_classes: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    names: Sequence[str] = CHECKPOINT_FILES,
) -> RecordedCheckpoint:
    """The checkpoint file ``checkpoint`` names (a run directory: the first of ``names`` in it) and what it
    records, with the caller's ``model`` / ``num_classes`` / ``model_kwargs`` checked against it.

    A value the file records is taken from it; a given value that differs is refused. Arguments the file does not
    record are added to ``model_kwargs`` (and passed on by :meth:`RecordedCheckpoint.build`).

    Raises:
        FileNotFoundError: no such file, or a folder without a checkpoint.
        ValueError: an unreadable file; ``model``, ``num_classes`` or a ``model_kwargs`` entry contradicting the
            recorded one (one line naming both values and what to do).
    """
    path = resolve_checkpoint(checkpoint, names)
    found = _read(path)
    given = dict(model_kwargs or {})
    if num_classes is not None:
        given["num_classes"] = num_classes
    if not found.recorded:
        found.model, found.model_kwargs, found.given = model, given, given
        return found
    if model is not None and model != found.model:
        raise ValueError(f"--model {model} contradicts {path}, which records model {found.model}: leave --model out "
                         "(the checkpoint names its model), or give a checkpoint of that model")
    for key, value in given.items():
        if key in found.model_kwargs and found.model_kwargs[key] != value:
            option = "--num-classes" if key == "num_classes" else f"--model-kwargs {key}="
            raise ValueError(f"{option}{'' if option.endswith('=') else ' '}{value!r} contradicts {path}, which "
                             f"records {key}={found.model_kwargs[key]!r}: leave it out (the checkpoint records it)")
    found.given = {k: v for k, v in given.items() if k not in found.model_kwargs}
    found.model_kwargs = {**found.model_kwargs, **found.given}
    return found


def _read(path: Path) -> RecordedCheckpoint:
    """What ``path`` records, without the caller's values: a training state, this library's weights, or neither."""
    meta = read_metadata(path)
    if meta is not None:
        if meta.get("format") != WEIGHTS_FORMAT or not meta.get("model"):
            return RecordedCheckpoint(path, None, {}, recorded=False, metadata=meta)
        return RecordedCheckpoint(
            path, meta["model"], _json(meta.get("model_kwargs", "{}"), path, "model_kwargs"), recorded=True,
            data_spec=meta.get("data_spec"), metadata=meta,
            train_config=_json(meta["train_config"], path, "train_config") if "train_config" in meta else None)
    state = _training_state(path) if is_torch_file(path) else None
    if state is None:
        return RecordedCheckpoint(path, None, {}, recorded=False)
    config = state.get("config")
    return RecordedCheckpoint(
        path, str(state["model_name"]), dict(state["model_kwargs"]), recorded=True, data_spec=state.get("data_spec"),
        train_config=_json(config, path, "config") if isinstance(config, str) else None, state=state)


def _started_in(run_dir: Path) -> Path | None:
    """The working folder the run in ``run_dir`` was started in (``provenance.json``'s ``cwd``), if recorded."""
    try:
        cwd = json.loads((run_dir / "provenance.json").read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(cwd) if isinstance(cwd, str) else None


def _training_state(path: Path) -> dict[str, Any] | None:
    """The training state in ``path``; None for another kind of file (official checkpoint, plain state dict)."""
    try:
        return load_training_state(path)
    except ValueError as err:
        if TRAIN_FORMAT in str(err):
            return None
        raise


def _json(text: str, path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: its {what} entry is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: its {what} entry must be a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value
