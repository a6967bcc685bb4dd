"""A deterministic scene set of real images for detection and segmentation: small images pasted on canvases.

Each scene is an RGB canvas (``image_size`` x ``image_size``) with a light textured background and 1 to a few
objects, each a real image of the source data set (Fashion-MNIST or scikit-learn's digits) resized to a random size,
put at a random place, tinted with a random colour and pasted through its foreground mask (its pixels above a
threshold). Later objects occlude earlier ones; an object left with too few visible pixels is not drawn at all, so
the pictures and the annotations always agree. Train scenes take their objects from the source's train split, val
scenes from its test split.

Layout written under ``root`` (COCO instances + the library's generic semantic-segmentation layout)::

    root/images/{train,val}/000000.png          RGB scenes
    root/labels/{train,val}/000000.png          uint8 L-mode: 0 background, k = category k (1..K), 255 = ignore
    root/annotations/instances_{train,val}.json COCO: bbox [x, y, w, h] of the visible mask, area, RLE segmentation
    root/classes.json                           ["background", class 1, ..., class K]
    root/scenes.json                            the arguments that made the set (checked on reuse)
    root/done                                   written last: the set is complete

Category ``k`` (1..K) is the source's class ``k - 1``. Every pixel of a scene belongs to at most one object (its
visible mask), so the label image is exactly the union of the instance masks painted with their categories.

Generation is a pure function of the arguments: the same arguments give byte-identical files. Every file is written
atomically; a set without ``done`` (interrupted) is generated again, a finished one is reused, and asking for other
arguments in the same root is an error. A training run finds (or makes) its set with :func:`scenes_root`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..._atomic import atomic_path, write_text_atomic
from ..engine.distributed import DistInfo, all_gather_objects
from .config import DenseConfig

__all__ = ["SceneConfig", "make_scenes", "scene_paths", "scenes_root"]

FORMAT_VERSION = 1
SOURCES = ("fashion-mnist", "digits")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SceneConfig:
    """Everything the scenes depend on; stored in ``root/scenes.json``.

    ``scale``: an object's longer side as a fraction of ``image_size``, drawn uniformly. ``threshold``: a source
    pixel (0-255) above it is foreground. An object whose visible area falls below ``min_area`` pixels or below
    ``min_visible`` of its own mask is dropped. ``noise``: strength of the background texture (0: black).
    """

    source: str = "digits"
    num_train: int = 512
    num_val: int = 128
    image_size: int = 128
    objects: tuple[int, int] = (1, 4)
    scale: tuple[float, float] = (0.2, 0.5)
    seed: int = 0
    tint: bool = True
    threshold: int = 40
    min_area: int = 16
    min_visible: float = 0.25
    noise: float = 1.0
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["objects"] = list(self.objects)
        values["scale"] = list(self.scale)
        return values


def scene_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path, Path]:
    """(image folder, label folder, COCO annotation file) of ``split`` ("train" or "val") under ``root``."""
    root = Path(root)
    return root / "images" / split, root / "labels" / split, root / "annotations" / f"instances_{split}.json"


def make_scenes(
    root: str | os.PathLike, source: str = "digits", data_dir: str | os.PathLike | None = None, num_train: int = 512,
    num_val: int = 128, image_size: int = 128, objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.2, 0.5), seed: int = 0, progress: bool = False, *, tint: bool = True,
    threshold: int = 40, min_area: int = 16, min_visible: float = 0.25, noise: float = 1.0,
) -> Path:
    """Generate (or reuse) the scene set under ``root`` and return ``root``; see the module docstring for the layout.

    ``source``: "fashion-mnist" (reads ``data_dir``, a folder holding ``FashionMNIST/raw``) or "digits"
    (scikit-learn's 8x8 digits, upscaled; ``data_dir`` unused). ``objects``: (min, max) objects drawn per scene,
    before occlusion drops any. ``data_dir`` is not part of the set's identity (the same files may live elsewhere).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    lo, hi = (int(v) for v in objects)
    if not 0 <= lo <= hi or hi < 1:
        raise ValueError(f"objects must be (min, max) with 0 <= min <= max and max >= 1, got {objects}")
    s_lo, s_hi = (float(v) for v in scale)
    if not 0 < s_lo <= s_hi <= 1:
        raise ValueError(f"scale must be (min, max) fractions of image_size in (0, 1], got {scale}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    config = SceneConfig(
        source, int(num_train), int(num_val), int(image_size), (lo, hi), (s_lo, s_hi), int(seed),
        bool(tint), int(threshold), int(min_area), float(min_visible), float(noise),
    )
    root = Path(root).expanduser()
    _check_root(root, config)
    if (root / "done").is_file():
        return root

    train_images, train_labels, test_images, test_labels, classes = _load_source(source, data_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / "scenes.json", json.dumps(config.to_json(), indent=2) + "\n")
    write_text_atomic(root / "classes.json", json.dumps(["background", *classes], indent=2) + "\n")
    pools = {"train": (train_images, train_labels), "val": (test_images, test_labels)}
    counts = {"train": config.num_train, "val": config.num_val}
    for split_id, split in enumerate(SPLITS):
        _write_split(root, split, split_id, counts[split], pools[split], classes, config, progress)
    write_text_atomic(root / "done", "")
    return root


def scenes_root(config: DenseConfig, log: Callable[[str], None] = print) -> Path:
    """The scene set of ``config``, generated if needed (by rank 0 under torchrun; the others wait for it); by
    default ``runs/scenes/<source>-<size>px-<train>-<val>``, shared by runs with the same scene settings."""
    import torch.distributed as dist

    settings = f"{config.scene_source}-{config.image_size}px-{config.num_train}-{config.num_val}"
    root = Path(config.scenes_dir) if config.scenes_dir else Path("runs") / "scenes" / settings
    initialized = dist.is_available() and dist.is_initialized()
    info = DistInfo(dist.get_rank(), dist.get_world_size()) if initialized else DistInfo()
    if info.is_main:
        if not (root / "done").is_file():
            log(f"generating {config.num_train} + {config.num_val} {config.scene_source} scenes "
                f"({config.image_size}x{config.image_size}) in {root}")
        make_scenes(root, source=config.scene_source or "digits", data_dir=config.data_dir,
                    num_train=config.num_train, num_val=config.num_val, image_size=config.image_size)
    all_gather_objects(None, info)  # a barrier: every process reads the finished set
    return root


def _check_root(root: Path, config: SceneConfig) -> None:
    meta = root / "scenes.json"
    if meta.is_file():
        stored = json.loads(meta.read_text())
        wanted = config.to_json()
        if stored != wanted:
            diff = {k: (stored.get(k), wanted[k]) for k in wanted if stored.get(k) != wanted[k]}
            raise ValueError(
                f"{root} holds a scene set made with other arguments (stored vs asked: {diff}); "
                "use another root or delete this one"
            )
    elif root.is_dir() and any(root.iterdir()):
        raise ValueError(f"{root} exists, is not empty and holds no scene set (no scenes.json); use another root")


def _load_source(source: str, data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, h, w) and int labels (N,) of the source's train and test splits, and its class names."""
    from ..classification.data import digits_splits, fashion_mnist_splits, need_data_dir

    if source == "digits":
        train, test, classes = digits_splits()
    else:
        train, test, classes = fashion_mnist_splits(need_data_dir(source, data_dir))

    def arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
        images = split.images[:, 0].numpy()
        if images.dtype != np.uint8:  # digits: float in [0, 1]
            images = np.round(images * 255.0).clip(0, 255).astype(np.uint8)
        return images, split.labels.numpy().astype(np.int64)

    return (*arrays(train), *arrays(test), list(classes))


def _rng(config: SceneConfig, split_id: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, split_id, index]))


def _background(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """A dark, smooth colour texture plus fine grain: float32 (size, size, 3) in [0, 255]."""
    from PIL import Image

    if noise <= 0:
        return np.zeros((size, size, 3), np.float32)
    cells = int(rng.integers(2, 6))
    coarse = (rng.uniform(0.0, 70.0, size=(cells, cells, 3)) * noise).clip(0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
    grain = rng.normal(0.0, 6.0 * noise, size=(size, size, 1)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255)


def _draw_object(
    rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], config: SceneConfig
) -> tuple[int, np.ndarray, np.ndarray, tuple[int, int]] | None:
    """(class, colour patch float (h, w, 3), mask bool (h, w), (top, left)) of one object, or None if too small."""
    from PIL import Image

    images, labels = pool
    size = config.image_size
    index = int(rng.integers(len(images)))
    side = rng.uniform(*config.scale) * size
    aspect = rng.uniform(0.8, 1.25)  # width / height
    h = int(np.clip(round(side / max(aspect, 1.0)), 4, size))
    w = int(np.clip(round(side * min(aspect, 1.0)), 4, size))
    gray = np.asarray(Image.fromarray(images[index], "L").resize((w, h), Image.Resampling.BILINEAR), np.float32)
    mask = gray > config.threshold
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    colour = rng.uniform(0.35, 1.0, size=3) if config.tint else np.ones(3)
    if mask.sum() < config.min_area:
        return None
    # a brighter floor keeps the object distinct from the dark background
    patch = (60.0 + gray[..., None] * (195.0 / 255.0)) * colour.astype(np.float32)
    return int(labels[index]), patch.astype(np.float32), mask, (top, left)


def make_scene(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], config: SceneConfig) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: uint8 RGB image (S, S, 3) and its objects [(class index, visible mask bool (S, S))], in paint order."""
    size = config.image_size
    canvas = _background(rng, size, config.noise)
    count = int(rng.integers(config.objects[0], config.objects[1] + 1))
    drawn = []
    for _ in range(count):
        for _attempt in range(3):
            obj = _draw_object(rng, pool, config)
            if obj is not None:
                drawn.append(obj)
                break
    full = []
    for cls, _patch, mask, (top, left) in drawn:
        m = np.zeros((size, size), bool)
        m[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
        full.append(m)
    # visible part: not covered by any later object; dropping an object never uncovers another
    covered = np.zeros((size, size), bool)
    visible: list[np.ndarray | None] = [None] * len(drawn)
    for i in range(len(drawn) - 1, -1, -1):
        v = full[i] & ~covered
        area, own = int(v.sum()), int(full[i].sum())
        if area >= config.min_area and area >= config.min_visible * own:
            visible[i] = v
            covered |= full[i]
    objects = []
    for (cls, patch, mask, (top, left)), seen in zip(drawn, visible):
        if seen is None:
            continue
        region = canvas[top : top + mask.shape[0], left : left + mask.shape[1]]
        region[mask] = patch[mask]
        objects.append((cls, seen))
    return np.round(canvas).clip(0, 255).astype(np.uint8), objects


def _write_split(
    root: Path, split: str, split_id: int, count: int, pool: tuple[np.ndarray, np.ndarray], classes: list[str],
    config: SceneConfig, progress: bool,
) -> None:
    """Write ``count`` scenes of ``split`` (images, labels, COCO annotations) drawn from ``pool``."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    image_dir, label_dir, ann_file = scene_paths(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    indices: Any = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"scenes {split}", unit="img")
    size = config.image_size
    for index in indices:
        image, objects = make_scene(_rng(config, split_id, index), pool, config)
        label = np.zeros((size, size), np.uint8)
        name = f"{index:06d}.png"
        image_id = index + 1
        for cls, visible in objects:
            label[visible] = cls + 1
            rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
                "area": float(visible.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
            })
        _save_png(Image.fromarray(image, "RGB"), image_dir / name)
        _save_png(Image.fromarray(label, "L"), label_dir / name)
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
    coco = {
        "info": {"description": f"involution scenes ({config.source}, {split})", "version": str(config.version)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": config.source} for k, name in enumerate(classes)],
    }
    write_text_atomic(ann_file, json.dumps(coco, separators=(",", ":")))


def _save_png(image: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
