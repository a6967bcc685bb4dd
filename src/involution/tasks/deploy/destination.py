"""Where an export may be written, and in which format: the format follows ``out``'s extension, and an export never
replaces a file that is not an export of the same format (a checkpoint above all)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..._atomic import refuse_same_file, write_error
from .onnx_file import require

FORMATS = ("onnx", "exported-program", "openvino")
# The extension of each format's files; without --format, out's extension says which format to write.
EXTENSIONS = {".onnx": "onnx", ".pt2": "exported-program", ".xml": "openvino"}
# Weights and training states (this library's, torch's, PaddlePaddle's, Lightning's): never an export's name.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".pdparams", ".ckpt")


def _accepted() -> str:
    return " or ".join(f"*{ext} ({fmt})" for ext, fmt in EXTENSIONS.items())


def export_format(out: str | os.PathLike, format: str | None = None) -> str:
    """The format to write at ``out``: ``format`` if given (it must agree with a known extension), else the one
    its extension names (``.onnx``: ``"onnx"``, ``.pt2``: ``"exported-program"``).

    Raises:
        ValueError: an unknown ``format``; ``format`` contradicting the extension; no ``format`` and an
            extension that names none; a checkpoint's extension (``.pt``, ``.pth``, ...).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    suffix = Path(out).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        raise ValueError(f"--out {out}: {suffix} is a checkpoint's extension and an export never takes a "
                         f"checkpoint's name; name the export {_accepted()}")
    implied = EXTENSIONS.get(suffix)
    if format is None:
        if implied is None:
            raise ValueError(f"--out {out}: cannot tell the export format from the extension "
                             f"{suffix or '(none)'!r}; name the file {_accepted()}, or give --format")
        return implied
    if implied is not None and implied != format:
        raise ValueError(f"--out {out}: --format {format} contradicts the extension {suffix}, which names "
                         f"{implied}; drop --format or name the file {_extension(format)}")
    return format


def _extension(format: str) -> str:
    return next(f"*{ext}" for ext, fmt in EXTENSIONS.items() if fmt == format)


def is_export(path: Path, format: str) -> bool:
    """Whether the file ``path`` is an export in ``format``: a ``torch.export.save`` archive (a zip whose
    ``archive_format`` record says ``pt2``), an ONNX model (a ModelProto with an IR version and a graph) or an
    OpenVINO IR (an XML document whose root element is ``<net>``)."""
    if format == "openvino":
        return _is_openvino_ir(path)
    if format == "onnx":
        require("onnx", "ONNX export")
    try:
        if format == "exported-program":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/archive_format")]
                return bool(names) and archive.read(names[0]) == b"pt2"
        import onnx

        proto = onnx.load_model(str(path), load_external_data=False)
        return proto.ir_version > 0 and proto.HasField("graph")
    except Exception:  # noqa: BLE001 - whatever the file is, a parser that fails on it says: not an export
        return False


def _is_openvino_ir(path: Path) -> bool:
    import xml.etree.ElementTree as ElementTree

    try:
        for _event, element in ElementTree.iterparse(path, events=("start",)):
            return element.tag == "net"  # the root element is the first one started
    except (ElementTree.ParseError, OSError, UnicodeDecodeError):
        pass
    return False


def check_writable(out: Path) -> None:
    """:class:`~involution._atomic.WriteError` naming ``out`` when no file can be created there: a file where a
    folder on the way should be, or a folder that refuses new files (permissions, an immutable or read-only
    folder; ``os.access`` asks the kernel, so it is right for root too)."""
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        raise write_error(out, NotADirectoryError(f"{existing} is a file, not a directory"))
    if not os.access(existing, os.W_OK | os.X_OK):
        # No errno: write_error tells a read-only file system (or a full disk) apart by itself, else says this.
        raise write_error(out, OSError(f"no files can be created in {existing}"))


def check_destination(out: Path, format: str | None, checkpoint: str | os.PathLike | None = None) -> str:
    """Refuse, before any work, an ``out`` that cannot or must not be written, and return the format to write there
    (:func:`export_format`). Refused: a directory; the ``checkpoint`` file itself (by any name: symlinks, hard links
    and ``..`` compare equal); a checkpoint's extension, or one that does not agree with ``format``; an existing file
    that is not an export in that format (an export only replaces an earlier export of its format); a place where no
    file can be created.

    Raises:
        IsADirectoryError: ``out`` is a directory.
        ValueError: ``out`` is the checkpoint, has a refused extension, or is an existing file other than an export
            in the format.
        involution._atomic.WriteError: no file can be created at ``out``.
    """
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory; give the file to write, e.g. {out / 'model.onnx'}")
    if checkpoint is not None:
        refuse_same_file(checkpoint, out)
    format = export_format(out, format)
    if out.exists() and not is_export(out, format):
        raise ValueError(f"--out {out} exists and is not an {format} export; an export replaces only an earlier "
                         "export of its format: remove the file or choose another --out")
    weights = out.with_suffix(".bin")  # an OpenVINO IR's weights, replaced with it
    if format == "openvino" and weights.exists() and not (out.exists() and weights.is_file()):
        raise ValueError(f"--out {out}: {weights} exists without an IR beside it, and the export would replace it: "
                         "remove the file or choose another --out")
    check_writable(out)
    return format
