"""Checkpoints: this library's safetensors format, official mmcls RedNet files, plain state dicts.

Own format: a safetensors file whose metadata records ``format`` ("involution"), ``format_version``, the registry
``model`` name and its constructor ``model_kwargs`` (JSON), so :func:`load_model` rebuilds the model from the file
alone. Files are written to a temporary name beside the target and renamed into place.

Official mmcls checkpoints (``{'meta': ..., 'state_dict': {'backbone.stem.0.conv.weight': ..., 'head.fc.weight':
...}}``) use the same module names as :class:`~involution.models.rednet.RedNet`, so mapping them is prefix
stripping: ``backbone.X -> X``, ``head.fc.X -> fc.X``. The other parts of official detection/segmentation
checkpoints (``neck.``, ``rpn_head.`` ...) are ignored with a warning. ``.pth`` files are read with
``torch.load(weights_only=True)``: nothing but tensors and plain containers is ever unpickled.

Loading is strict about the body (any missing, unexpected or differently shaped key raises ``RuntimeError``
listing them) and lenient about the classifier: a checkpoint with another class count, or without a classifier,
loads the body and leaves the classifier freshly initialised, with a warning.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._atomic import atomic_path, refuse_same_file
from ._safetensors import read_safetensors, write_safetensors

FORMAT = "involution"
FORMAT_VERSION = "1"
# Parts of official detection / segmentation checkpoints that a classifier or backbone has no use for.
_OTHER_PARTS = ("neck.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.", "decode_head.", "auxiliary_head.")
_OFFICIAL_RENAMES = (("backbone.", ""), ("head.fc.", "fc."))
_LIST_LIMIT = 12


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did: keys loaded, whether the classifier was left freshly initialised, and
    the checkpoint keys it ignored (other parts of official detector/segmentor files)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    head_reinitialised: bool = False
    ignored: list[str] = field(default_factory=list)
    layout: str = "plain"


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
    return ValueError(f"{path}: not a PyTorch or safetensors checkpoint ({what})")


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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read any supported file: ``(state_dict, metadata)`` with keys as stored (metadata empty for ``.pth``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        tensors, metadata = read_safetensors(path)
        if not tensors:
            raise ValueError(f"{path}: the checkpoint holds no tensors")
        return tensors, metadata
    return _extract_state_dict(read_torch_file(path), path), {}


# -- key layouts --------------------------------------------------------------------------------------------------


def is_official_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the keys are those of an mmcls/mmdet/mmseg model (``backbone.`` prefixes)."""
    return any(k.startswith("backbone.") for k in state_dict)


def official_to_ours(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map official keys to this library's: ``(state_dict, ignored_keys)``.

    ``backbone.X -> X``, ``head.fc.X -> fc.X``; detector/segmentor parts (``neck.`` ...) are returned as ignored;
    anything else keeps its name (and will show up as unexpected).
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(_OTHER_PARTS):
            ignored.append(key)
            continue
        new = key
        for old_prefix, new_prefix in _OFFICIAL_RENAMES:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        out[new] = value
    return out, ignored


def ours_to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`official_to_ours` for a RedNet classifier (``fc.X -> head.fc.X``, else ``backbone.``)."""
    return {("head." + k if k.startswith("fc.") else "backbone." + k): v for k, v in state_dict.items()}


# -- applying -----------------------------------------------------------------------------------------------------


def _fmt(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def apply_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state dict") -> LoadReport:
    """Load ``state_dict`` (this library's key names) into ``model``: strict body, lenient classifier.

    Keys under ``model.pruned_prefixes`` (the stages and classifier a features_only model dropped) are skipped
    silently; BatchNorm ``num_batches_tracked`` may be absent. Raises ``RuntimeError`` naming ``source`` and listing
    missing / unexpected / mismatched keys when the body does not fit.
    """
    report = LoadReport(path=source)
    own = model.state_dict()
    pruned = tuple(getattr(model, "pruned_prefixes", ()))
    head_prefix = getattr(model, "classifier_name", "fc") + "."
    ckpt = {k: v for k, v in state_dict.items() if not (pruned and k.startswith(pruned))}

    missing = [k for k in own if k not in ckpt and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in ckpt if k not in own]
    mismatched = [k for k in own if k in ckpt and tuple(ckpt[k].shape) != tuple(own[k].shape)]  # model order

    def body(keys: list[str]) -> list[str]:
        return [k for k in keys if not k.startswith(head_prefix)]

    if body(missing) or body(unexpected) or body(mismatched):
        lines = [f"{source}: the checkpoint does not fit {getattr(model, 'model_name', None) or type(model).__name__}"]
        if body(missing):
            lines.append(f"  missing keys ({len(body(missing))}): {_fmt(body(missing))}")
        if body(unexpected):
            lines.append(f"  unexpected keys ({len(body(unexpected))}): {_fmt(body(unexpected))}")
        if body(mismatched):
            shapes = [f"{k} (checkpoint {tuple(ckpt[k].shape)}, model {tuple(own[k].shape)})" for k in body(mismatched)]
            lines.append(f"  mismatched shapes ({len(shapes)}): {_fmt(shapes)}")
        raise RuntimeError("\n".join(lines))

    head_issues = sorted(set(missing + unexpected + mismatched) - set(body(missing + unexpected + mismatched)))
    if head_issues:
        ckpt = {k: v for k, v in ckpt.items() if not k.startswith(head_prefix)}
        have = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith(head_prefix)}
        want = {k: tuple(v.shape) for k, v in own.items() if k.startswith(head_prefix)}
        warnings.warn(
            f"{source}: the classifier does not match (checkpoint {have or 'none'}, model {want or 'none'}); "
            "loaded the backbone and re-initialised the classifier",
            stacklevel=3,
        )
        init = getattr(model, "init_classifier", None)
        if callable(init):
            init()
        report.head_reinitialised = True

    result = model.load_state_dict(ckpt, strict=False)
    leftover = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k not in head_issues]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise RuntimeError(f"{source}: unexpected load result {result}")
    report.loaded = sorted(ckpt)
    return report


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a checkpoint file into ``model`` (in place); see the module docstring for the formats and rules.

    A model with a ``load_checkpoint(path)`` method of its own (the segmentors, whose files have other parts)
    loads itself.
    """
    own_loader = getattr(type(model), "load_checkpoint", None)
    if callable(own_loader):
        return model.load_checkpoint(path)
    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    layout = "plain"
    ignored: list[str] = []
    if metadata.get("format") == FORMAT:
        layout = FORMAT
        stored = metadata.get("model")
        name = getattr(model, "model_name", None)
        if stored and name and stored != name:
            warnings.warn(f"{path}: written for model {stored!r}, loading into {name!r}", stacklevel=2)
    elif is_official_layout(state_dict):
        layout = "official"
        state_dict, ignored = official_to_ours(state_dict)
        if ignored:
            parts = sorted({k.split(".", 1)[0] for k in ignored})
            warnings.warn(f"{path}: ignored {len(ignored)} keys of other parts ({', '.join(parts)})", stacklevel=2)
    report = apply_state_dict(model, state_dict, source=str(path))
    report.ignored, report.layout = ignored, layout
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
    from .. import __version__

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


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild the model recorded in one of this library's checkpoints and load its weights.

    ``overrides`` replace recorded constructor arguments (e.g. ``num_classes=10`` re-initialises the classifier,
    ``grad_checkpointing=True``).
    """
    from .registry import create_model

    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    name = metadata.get("model") if metadata.get("format") == FORMAT else None
    if not name:
        raise ValueError(
            f"{path}: not one of this library's checkpoints (no model name recorded); "
            "use create_model(name, checkpoint=path)"
        )
    try:
        kwargs = json.loads(metadata.get("model_kwargs", "{}"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: model_kwargs metadata is not JSON ({err})") from None
    kwargs.update(overrides)
    model = create_model(name, **kwargs)
    if callable(getattr(type(model), "apply_state_dict", None)):  # models with several heads check keys themselves
        model.apply_state_dict(state_dict, source=str(path))
    else:
        apply_state_dict(model, state_dict, source=str(path))
    return model


# -- official files -----------------------------------------------------------------------------------------------

_DEPTH_OF_LAYERS = {(1, 2, 4, 1): 26, (2, 3, 5, 2): 38, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


def infer_rednet_config(state_dict: Mapping[str, Tensor], source: str = "state dict") -> tuple[str, dict[str, Any]]:
    """The registry name and constructor kwargs of a RedNet state dict in this library's key names."""
    blocks = []
    for i in range(1, 5):
        idx = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{i}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    depth = _DEPTH_OF_LAYERS.get(tuple(blocks))
    if depth is None or "stem.1.conv2.conv.weight" not in state_dict:
        raise ValueError(f"{source}: not a RedNet checkpoint (blocks per stage {tuple(blocks)})")
    kwargs: dict[str, Any] = {}
    stem_out = state_dict["stem.4.conv.weight"].shape[0]
    if stem_out != 64:
        kwargs["width"] = stem_out / 64
    stem_gen = state_dict["stem.1.conv2.conv.weight"].shape[0]
    groups = max(1, (stem_out // 2) // 16)
    k = round((stem_gen / groups) ** 0.5)
    if k != 3:
        kwargs["stem_kernel_size"] = k
    in_chans = state_dict["stem.0.conv.weight"].shape[1]
    if in_chans != 3:
        kwargs["in_chans"] = in_chans
    kwargs["num_classes"] = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else 0
    return f"rednet{depth}", kwargs


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, name: str | None = None, **kwargs: Any) -> Path:
    """Convert an official mmcls RedNet checkpoint (``.pth``) to this library's safetensors format.

    The architecture (depth, stem kernel size, class count; 0 classes for a backbone-only file) is read from the
    keys unless ``name`` / ``kwargs`` are given. Returns the written path.
    """
    from .registry import create_model

    src = Path(src)
    refuse_same_file(src, dst)
    state_dict, _ = read_checkpoint(src)
    if not is_official_layout(state_dict):
        raise ValueError(f"{src}: not an official mmcls checkpoint (no 'backbone.' keys)")
    state_dict, ignored = official_to_ours(state_dict)
    if ignored:
        parts = sorted({k.split(".", 1)[0] for k in ignored})
        warnings.warn(f"{src}: ignored {len(ignored)} keys of other parts ({', '.join(parts)})", stacklevel=2)
    inferred_name, inferred = infer_rednet_config(state_dict, str(src))
    model = create_model(name or inferred_name, **{**inferred, **kwargs})
    apply_state_dict(model, state_dict, source=str(src))
    return save_checkpoint(model, dst, metadata={"converted_from": src.name})
