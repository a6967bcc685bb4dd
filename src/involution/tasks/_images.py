"""Reading image files with errors that name the file: every data set and ``predict`` reads through here.

Pillow's own messages ("image file is truncated", a ``DecompressionBombError`` traceback, a ``struct.error`` from a
cut header) say what went wrong but not where; in a folder of thousands of images the path is what a user needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Pillow's modes of images deeper than 8 bits per sample, with the value of full intensity: 16-bit PNG and TIFF
# greys open as "I;16" (older Pillows: "I", a 32-bit int mode holding the same 0..65535 values).
_DEEP_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def to_mode(image: Any, mode: str | None, source: str | os.PathLike = "image") -> Any:
    """``image`` (PIL) converted to ``mode`` (``"L"``, ``"RGB"`` ...; None: as it is).

    An 8-bit image stays a PIL image. A deeper one (a 16-bit grey PNG) becomes a float tensor ``(C, H, W)`` in
    [0, 1] (C: 1 for ``"L"``, 3 for ``"RGB"``) at its full precision: Pillow's ``convert`` would clip every value
    above 255 to white. Float images (mode ``"F"``, no fixed value range) and deep-image values outside their
    range are refused with a ValueError naming ``source``.
    """
    if image.mode == "F":
        raise ValueError(f"{source}: a 32-bit floating-point image has no fixed value range to scale to [0, 1]; "
                         "save it with 8 or 16 bits per sample")
    if image.mode not in _DEEP_MODES:
        return image.convert(mode) if mode is not None and image.mode != mode else image
    full = _DEEP_MODES[image.mode]
    values = torch.from_numpy(np.asarray(image).astype(np.float64))
    if values.numel() and (values.min() < 0 or values.max() > full):
        raise ValueError(f"{source}: a {image.mode} image with values outside 0..{full} (from {int(values.min())} "
                         f"to {int(values.max())}); save it with 8 or 16 bits per sample")
    grey = (values / full).float().unsqueeze(0)  # (1, H, W)
    channels = {None: 1, "L": 1, "RGB": 3}.get(mode)
    if channels is None:
        raise ValueError(f"{source}: a 16-bit grey image cannot be read as {mode!r} (only 'L' or 'RGB')")
    return grey.expand(channels, -1, -1).contiguous()


def open_image(path: str | os.PathLike, mode: str | None = None) -> Any:
    """The image at ``path`` as a fully decoded PIL image converted to ``mode`` if given (see :func:`to_mode`:
    an image deeper than 8 bits comes as a float tensor ``(C, H, W)`` in [0, 1] instead).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and what is wrong with it: not an image Pillow can read, truncated or
            corrupt, or so large (by its header) that decoding it could exhaust memory (a decompression bomb).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            decoded = image.copy()
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused as a possible decompression bomb (its header claims more pixels than "
                         f"Pillow decodes safely): {err}") from None
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises on a damaged file (OSError, struct.error ...)
        what = "truncated" if "truncated" in str(err) else "damaged"
        raise ValueError(f"{path}: the image file is {what} ({type(err).__name__}: {err})") from None
    return decoded if mode is None else to_mode(decoded, mode, path)


def read_image(path: str | os.PathLike, transform: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The image at ``path`` as a tensor: ``transform`` applied to the decoded PIL image (a classifier's
    preprocessing, which sets the mode itself), or without one the RGB image as float ``(3, H, W)`` in [0, 1].
    Errors as :func:`open_image`'s."""
    if transform is not None:
        return transform(open_image(path))
    image = open_image(path, "RGB")
    if isinstance(image, Tensor):  # a 16-bit image, already scaled
        return image
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255.0)
