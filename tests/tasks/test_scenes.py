"""The generated scene set: deterministic, reusable, and its COCO, label and class files agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FASHION_MNIST
from PIL import Image

from involution.tasks.dense.scenes import make_scenes, scene_paths

SMALL = {"num_train": 6, "num_val": 3, "image_size": 64, "objects": (1, 4), "scale": (0.25, 0.6), "seed": 3}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits_scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes") / "digits", "digits", **SMALL)


def test_layout_and_determinism(digits_scenes, tmp_path):
    root = digits_scenes
    assert (root / "done").is_file()
    for split, count in (("train", 6), ("val", 3)):
        image_dir, label_dir, ann = scene_paths(root, split)
        assert sorted(p.name for p in image_dir.iterdir()) == [f"{i:06d}.png" for i in range(count)]
        assert sorted(p.name for p in label_dir.iterdir()) == [f"{i:06d}.png" for i in range(count)]
        assert ann.is_file()
    assert json.loads((root / "classes.json").read_text()) == ["background"] + [str(i) for i in range(10)]
    again = make_scenes(tmp_path / "again", "digits", **SMALL)
    assert _files(again) == _files(root)
    other = make_scenes(tmp_path / "other", "digits", **{**SMALL, "seed": 4})
    assert _files(other)["images/train/000000.png"] != _files(root)["images/train/000000.png"]
    with Image.open(root / "images" / "train" / "000000.png") as im:
        assert im.mode == "RGB" and im.size == (64, 64)


def test_reuse_redo_and_mismatch(tmp_path):
    root = make_scenes(tmp_path / "s", "digits", **SMALL)
    image = root / "images" / "train" / "000000.png"
    before = image.stat().st_mtime_ns
    assert make_scenes(root, "digits", **SMALL) == root
    assert image.stat().st_mtime_ns == before  # reused, not rewritten
    # an interrupted generation (no done marker, a file missing) is made again
    (root / "done").unlink()
    image.unlink()
    make_scenes(root, "digits", **SMALL)
    assert image.is_file() and (root / "done").is_file()
    with pytest.raises(ValueError, match="other arguments"):
        make_scenes(root, "digits", **{**SMALL, "num_train": 7})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_scenes(tmp_path / "busy", "digits", **SMALL)
    with pytest.raises(ValueError, match="source"):
        make_scenes(tmp_path / "bad", "mnist")
    with pytest.raises(ValueError, match="data-dir"):
        make_scenes(tmp_path / "nodir", "fashion-mnist", **SMALL)


def test_coco_masks_boxes_and_labels_agree(digits_scenes):
    from pycocotools import mask as mask_utils

    from involution.tasks.detection import load_coco

    root = digits_scenes
    for split in ("train", "val"):
        _, label_dir, ann_file = scene_paths(root, split)
        coco = load_coco(ann_file)
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        assert [coco.cats[i]["name"] for i in range(1, 11)] == [str(i) for i in range(10)]
        assert len(coco.getAnnIds()) > 0
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            assert (info["width"], info["height"]) == (64, 64)
            label = np.asarray(Image.open(label_dir / info["file_name"]))
            assert label.dtype == np.uint8 and label.shape == (64, 64)
            painted = np.zeros((64, 64), np.uint8)
            for ann in coco.imgToAnns[image_id]:
                assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
                mask = coco.annToMask(ann).astype(bool)
                assert mask.sum() == ann["area"] >= 16
                ys, xs = np.nonzero(mask)
                x, y = xs.min(), ys.min()
                assert ann["bbox"] == [x, y, xs.max() - x + 1, ys.max() - y + 1]
                assert np.allclose(mask_utils.toBbox(ann["segmentation"]), ann["bbox"])
                assert not painted[mask].any(), "visible masks overlap"
                painted[mask] = ann["category_id"]
            np.testing.assert_array_equal(label, painted)


def test_objects_come_from_the_right_split():
    """Val scenes draw from the source's test split: check the pool sizes the generator reads."""
    from involution.tasks.dense.scenes import _load_source

    train_images, _, test_images, test_labels, classes = _load_source("digits", None)
    assert train_images.dtype == np.uint8 and train_images.shape[1:] == (8, 8)
    assert len(train_images) + len(test_images) == 1797 and len(test_images) == len(test_labels) == 360
    assert train_images.max() == 255 and classes == [str(i) for i in range(10)]


@pytest.mark.skipif(not (FASHION_MNIST / "FashionMNIST" / "raw").is_dir(), reason="Fashion-MNIST not at hand")
def test_fashion_mnist_source(tmp_path):
    root = make_scenes(tmp_path / "fm", "fashion-mnist", data_dir=FASHION_MNIST, **{**SMALL, "num_train": 3})
    classes = json.loads((root / "classes.json").read_text())
    assert classes[0] == "background" and len(classes) == 11 and "Trouser" in classes
    with Image.open(root / "images" / "val" / "000000.png") as im:
        assert im.size == (64, 64)
