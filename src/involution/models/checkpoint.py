"""Checkpoint files and how a state dict fits a model.

Own format: a safetensors file whose metadata records ``format`` ("involution"), ``format_version``, the registry
``model`` name and its constructor ``model_kwargs`` (JSON), so :func:`~involution.models.load_model` rebuilds the
model from the file alone. Files are written to a temporary name beside the target and renamed into place.
``.pth`` files are read with ``torch.load(weights_only=True)``: nothing but tensors and plain containers is ever
unpickled; PaddlePaddle ``.pdparams`` files with an unpickler that builds numpy arrays and nothing else
(:mod:`involution.models.pdparams`).

Files of other layouts (official mmcls, mmdet, mmseg, PaddleClas) are mapped to our key names by a filter beside
each family's model (``checkpoint_filter_fn``, as in timm). :func:`fit_state_dict` is the one comparison of a state
dict with a model: strict about the body (any missing, unexpected or differently shaped key raises ``RuntimeError``
listing them) and lenient where the caller says, e.g. about the classifier: a checkpoint with another class count,
or without a classifier, loads the body and leaves the classifier freshly initialised, with a warning
(:func:`apply_state_dict`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._atomic import atomic_path
from .._version import __version__
from ._safetensors import read_safetensors, write_safetensors
from .checkpoint_checks import LIST_LIMIT as _LIST_LIMIT
from .checkpoint_checks import apply_recorded_preprocessing, check_finite, fmt_keys
from .pdparams import read_pdparams

FORMAT = "involution"
FORMAT_VERSION = "1"


# -- reading ------------------------------------------------------------------------------------------------------


def _numpy_scalar_globals() -> list[Any]:
    """numpy scalars and dtypes, which training loops leave in checkpoint metadata (e.g. a best score).

    Allowing them lets ``weights_only`` loading rebuild plain numbers; it admits no code and no other objects.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(code)) for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")}
    return [core.multiarray.scalar, np.dtype, *dtypes]


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive (PyTorch >= 1.6)
_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")  # pickled first by the legacy format
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")  # the object a weights_only load refused


def _head(path: Path, n: int = 32) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _is_torch_file(head: bytes) -> bool:
    """Whether ``head`` begins a ``torch.save`` file: a zip archive, or the legacy format's pickled magic number."""
    return head.startswith(_ZIP_MAGIC) or (head.startswith(b"\x80") and _LEGACY_MAGIC in head)


def _not_a_checkpoint(path: Path, head: bytes) -> ValueError:
    """The error for a file that is neither kind of checkpoint: what it begins with, so it can be recognised."""
    what = "it is empty" if not head else f"it begins with {head[:16]!r}"
    return ValueError(f"{path}: not a PyTorch, safetensors or PaddlePaddle checkpoint ({what})")


def _is_pickle(head: bytes) -> bool:
    """A bare pickle of protocol 2 to 5 (what ``paddle.save`` writes); torch files were recognised before."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, for untrusted files: ``ValueError`` naming the file when
    it is no ``torch.save`` file, is truncated or corrupt, or holds Python objects (which are never unpickled).

    Whatever a damaged file makes the unpickler raise (IndexError, struct.error, AssertionError ...) becomes that one
    error, and torch's advice to load with ``weights_only=False`` (which would run the file's code) never reaches it.
    """
    path = Path(path)
    head = _head(path)
    if not _is_torch_file(head):
        raise _not_a_checkpoint(path, head)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # noqa: BLE001 - an untrusted file's bytes can make the unpickler raise anything
        text = str(err)
        found = _GLOBAL.search(text) if isinstance(err, pickle.UnpicklingError) else None
        if found:
            raise ValueError(
                f"{path}: refused to load: the file holds Python objects other than tensors, numbers, strings and "
                f"containers ({found.group(1)}); such files are never unpickled here, as that could run their code"
            ) from None
        cause = text.strip().splitlines()[0][:160] if text.strip() else ""
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in text or not cause:
            cause = type(err).__name__
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint: the file is truncated or corrupt ({cause})"
        ) from None


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    head = _head(path, 9)
    # An 8-byte little-endian header length, then the JSON header's '{'; torch files start with 'PK' or 0x80.
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)


def _extract_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        # the file's content is at fault, not an argument: ValueError like every other unreadable checkpoint
        raise ValueError(f"{path}: expected a state dict (or a dict with 'state_dict'), got {type(obj).__name__}")  # noqa: TRY004
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:_LIST_LIMIT]})")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if others:
        warnings.warn(f"{path}: ignoring {len(others)} non-tensor entries: {others[:_LIST_LIMIT]}", stacklevel=3)
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The metadata of a safetensors checkpoint, without reading its tensors (what :func:`read_checkpoint` would
    give); None for a file of another kind (``.pth``, ``.pdparams``, a training state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return read_safetensors(path, metadata_only=True)[1] if _is_safetensors(path) else None


def is_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``torch.save`` file (which may hold a training state or a state dict)."""
    return _is_torch_file(_head(Path(path)))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read any supported file: ``(state_dict, metadata)`` with keys as stored (metadata empty for ``.pth``
    and ``.pdparams``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path for anything unreadable,
    and for weights holding NaN or infinite values (:func:`check_finite`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata: dict[str, str] = {}
    if _is_safetensors(path):
        tensors, metadata = read_safetensors(path)
        if not tensors:
            raise ValueError(f"{path}: the checkpoint holds no tensors")
    elif not _is_torch_file(head := _head(path)) and (path.suffix == ".pdparams" or _is_pickle(head)):
        tensors = read_pdparams(path)
    else:
        tensors = _extract_state_dict(read_torch_file(path), path)
    check_finite(tensors, path)
    return tensors, metadata


# -- comparing a state dict with a model --------------------------------------------------------------------------

_OPTIONAL = "num_batches_tracked"  # BatchNorm's step counter: frozen BNs have none, so it may lack on either side


@dataclass
class KeyFit:
    """How a checkpoint fits a model, once the strict keys passed: ``state_dict`` is the checkpoint to load (without
    the model's pruned parts and step counters it lacks), ``own`` the model's state dict, and ``missing`` /
    ``unexpected`` / ``mismatched`` the misfits that lie under lenient prefixes."""

    state_dict: dict[str, Tensor]
    own: dict[str, Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def misfits(self) -> list[str]:
        return self.missing + self.unexpected + self.mismatched

    def shaped(self, keys: list[str]) -> list[str]:
        """``key (checkpoint shape, model shape)`` for each key."""
        return [f"{k} (checkpoint {tuple(self.state_dict[k].shape)}, model {tuple(self.own[k].shape)})" for k in keys]


def fit_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "state dict",
    lenient: tuple[str, ...] = (),
    strict: tuple[str, ...] = (),
    hint: str = "",
) -> KeyFit:
    """Compare ``state_dict`` with ``model``'s keys and shapes; ``RuntimeError`` for every misfit not lenient.

    Keys under ``model.pruned_prefixes`` (what a features_only model dropped) are left out. A missing, unexpected
    or differently shaped key is lenient when it starts with a ``lenient`` prefix and no ``strict`` one; any other
    raises one error naming ``source`` and listing them all (``hint`` ends the message).
    """
    own = model.state_dict()
    pruned = tuple(getattr(model, "pruned_prefixes", ()))
    ckpt = {
        k: v
        for k, v in state_dict.items()
        if not (pruned and k.startswith(pruned)) and not (k.endswith(_OPTIONAL) and k not in own)
    }
    found = (
        [k for k in own if k not in ckpt and not k.endswith(_OPTIONAL)],
        [k for k in ckpt if k not in own],
        [k for k in own if k in ckpt and tuple(ckpt[k].shape) != tuple(own[k].shape)],  # in model order
    )

    def is_lenient(key: str) -> bool:
        return key.startswith(lenient) and not key.startswith(strict)

    fit = KeyFit(ckpt, own, *([k for k in keys if is_lenient(k)] for keys in found))
    missing, unexpected, mismatched = ([k for k in keys if not is_lenient(k)] for keys in found)
    if missing or unexpected or mismatched:
        lines = [f"{source}: the checkpoint does not fit {getattr(model, 'model_name', None) or type(model).__name__}"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {fmt_keys(keys)}")
        if mismatched:
            lines.append(f"  mismatched shapes ({len(mismatched)}): {fmt_keys(fit.shaped(mismatched))}")
        if hint:
            lines.append(f"  ({hint})")
        raise RuntimeError("\n".join(lines))
    return fit


@dataclass
class LoadReport:
    """What a checkpoint load did.

    ``layout``: the key layout read (``"involution"``, ``"official"``, ``"mmdet"``, ``"mmseg"``, ``"plain"`` ...);
    ``loaded``: the model keys loaded; ``ignored``: checkpoint keys of parts this model has not; ``skipped``:
    checkpoint keys of lenient parts with no counterpart of the same shape; ``not_loaded``: model keys left as
    initialised; ``reinitialised``: keys whose shape depends on the stem kernel size, kept as initialised;
    ``head_reinitialised``: the classifier did not match and was re-initialised.
    """

    path: str
    layout: str = "plain"
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    head_reinitialised: bool = False


def apply_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "state dict",
    heads: tuple[str, ...] | None = None,
    reinit: Callable[[list[str]], None] | None = None,
    hint: str = "",
) -> LoadReport:
    """Load ``state_dict`` (this library's key names) into ``model``: strict body, lenient classifiers.

    ``heads``: the classifiers' key prefixes (default ``model.classifier_name``). A classifier that does not fit
    (another class count, or absent on one side) is left out with a warning and re-initialised by
    ``reinit(prefixes)`` (default ``model.init_classifier()``). Anything else that does not fit raises
    ``RuntimeError`` (see :func:`fit_state_dict`).
    """
    heads = heads if heads is not None else (getattr(model, "classifier_name", "fc") + ".",)
    fit = fit_state_dict(model, state_dict, source, lenient=heads, hint=hint)
    report = LoadReport(path=source)
    ckpt = fit.state_dict
    bad = tuple(sorted({p for p in heads for k in fit.misfits() if k.startswith(p)}))
    if bad:
        have = {k: tuple(v.shape) for k, v in ckpt.items() if k.startswith(bad)}
        want = {k: tuple(v.shape) for k, v in fit.own.items() if k.startswith(bad)}
        warnings.warn(
            f"{source}: the classifier does not match ({', '.join(p.rstrip('.') for p in bad)} do not match: "
            f"checkpoint {have or 'none'}, model {want or 'none'}); loaded the rest and re-initialised the classifier",
            stacklevel=3,
        )
        ckpt = {k: v for k, v in ckpt.items() if not k.startswith(bad)}
        if reinit is not None:
            reinit(list(bad))
        elif callable(init_classifier := getattr(model, "init_classifier", None)):
            init_classifier()
        report.head_reinitialised = True
    model.load_state_dict(ckpt, strict=False)
    report.loaded = sorted(ckpt)
    return report


def to_model_keys(
    model: nn.Module, state_dict: dict[str, Tensor], metadata: Mapping[str, str], source: str, check_name: bool = True
) -> tuple[dict[str, Tensor], LoadReport]:
    """A checkpoint's state dict in ``model``'s key names, through the model's ``checkpoint_filter_fn(state_dict,
    source)`` (if it has one) for files of other layouts, and a report with the layout read and the keys ignored.

    ``check_name``: warn when this library's file was written for another model.
    """
    report = LoadReport(path=source)
    if metadata.get("format") == FORMAT:
        report.layout = FORMAT
        stored, name = metadata.get("model"), getattr(model, "model_name", None)
        if check_name and stored and name and stored != name:
            warnings.warn(f"{source}: written for model {stored!r}, loading into {name!r}", stacklevel=3)
        return state_dict, report
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict, report.ignored, report.layout = filter_fn(state_dict, source)
    return state_dict, report


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a checkpoint file into ``model`` (in place); see the module docstring for the formats and rules.

    A model with a ``load_checkpoint(path)`` method of its own (the segmentors, whose files have other parts)
    loads itself.
    """
    if callable(getattr(type(model), "load_checkpoint", None)):
        loads_itself: Callable[[str | os.PathLike], LoadReport] = getattr(model, "load_checkpoint")
        return loads_itself(path)
    state_dict, metadata = read_checkpoint(path)
    state_dict, report = to_model_keys(model, state_dict, metadata, str(path))
    applied = apply_state_dict(model, state_dict, source=str(path))
    report.loaded, report.head_reinitialised = applied.loaded, applied.head_reinitialised
    if report.layout == FORMAT:  # this library's file: the preprocessing its run trained with
        apply_recorded_preprocessing(model, metadata, path)
    return report


# -- writing ------------------------------------------------------------------------------------------------------


def _jsonable_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    kept, dropped = {}, []
    for key, value in kwargs.items():
        value = list(value) if isinstance(value, tuple) else value
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors with the metadata :func:`load_model` needs; returns the path.

    ``metadata``: extra entries (strings, or anything JSON-serialisable, stored as JSON). The file is written to a
    temporary name in the same folder and renamed over ``path``, so a crash never leaves a half-written file.
    """
    path = Path(path)
    kwargs, dropped = _jsonable_kwargs(getattr(model, "model_kwargs", {}) or {})
    if dropped:
        warnings.warn(
            f"saving {path}: constructor arguments {dropped} are not JSON-serialisable and are not recorded; "
            "load_model() will rebuild the model without them",
            stacklevel=2,
        )
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        model=getattr(model, "model_name", None) or "",
        model_kwargs=json.dumps(kwargs, sort_keys=True),
        library_version=__version__,
    )
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg:
        meta["pretrained_cfg"] = json.dumps(cfg, default=list)
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        write_safetensors(tmp, tensors, meta)
    return path
