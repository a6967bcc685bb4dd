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


def open_image(path: str | os.PathLike, mode: str | None = None) -> Any:
    """The image at ``path`` as a fully decoded PIL image (converted to ``mode`` if given).

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
            return image.convert(mode) if mode is not None and image.mode != mode else image.copy()
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


def read_image(path: str | os.PathLike, transform: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The image at ``path`` as a tensor: ``transform`` applied to the decoded PIL image (a classifier's
    preprocessing, which sets the mode itself), or without one the RGB image as float ``(3, H, W)`` in [0, 1].
    Errors as :func:`open_image`'s."""
    if transform is not None:
        return transform(open_image(path))
    array = np.asarray(open_image(path, "RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
