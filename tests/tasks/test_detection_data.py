"""COCO detection data (targets, flip, collate, errors) and COCO evaluation (AP of perfect, empty, shifted results)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from involution.tasks.detection import (
    CocoDetectionDataset,
    RandomHorizontalFlip,
    coco_evaluate,
    coco_scene_dataset,
    detection_collate,
    load_coco,
)
from involution.tasks.dense.scenes import make_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(
        tmp_path_factory.mktemp("det") / "s", "digits", num_train=8, num_val=4, image_size=64, objects=(2, 4), seed=1
    )


def test_targets(scenes):
    ds = coco_scene_dataset(scenes, "train")
    assert len(ds) == 8 and ds.num_classes == 11 and ds.category_names == [str(i) for i in range(10)]
    assert ds.label_to_category == {i: i for i in range(1, 11)}
    total = 0
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
        n = len(target["labels"])
        total += n
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and ((target["labels"] >= 1) & (target["labels"] <= 10)).all()
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 64, 64)
        assert target["area"].shape == (n,) and target["iscrowd"].tolist() == [0] * n
        assert target["image_id"] == ds.ids[index]
        b = target["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        # boxes are the masks' pixel extents, in (x1, y1, x2, y2) with exclusive right/bottom edges
        for box, mask, area in zip(b, target["masks"], target["area"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert int(mask.sum()) == area
    assert total >= 8
    no_masks = coco_scene_dataset(scenes, "val", masks=False)
    assert "masks" not in no_masks[0][1]


def test_flip(scenes):
    ds = coco_scene_dataset(scenes, "train")
    image, target = ds[0]
    flipped, ft = RandomHorizontalFlip(p=1.0)(image, target, key=0)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(ft["masks"], target["masks"].flip(-1))
    for box, mask in zip(ft["boxes"], ft["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert torch.equal(ft["labels"], target["labels"])
    same, st = RandomHorizontalFlip(p=0.0)(image, target, key=0)
    assert same is image and st is target
    # seeded: the same (seed, epoch, key) decides the same way; draws differ over keys and epochs
    a, b = RandomHorizontalFlip(0.5, seed=7), RandomHorizontalFlip(0.5, seed=7)
    tiny = {"boxes": torch.zeros(0, 4)}
    decide = lambda t, k: not torch.equal(t(image, tiny, key=k)[0], image)
    first = [decide(a, k) for k in range(32)]
    assert first == [decide(b, k) for k in range(32)] and 4 < sum(first) < 28
    a.set_epoch(1)
    assert [decide(a, k) for k in range(32)] != first
    # the data set passes the index as key
    flip_ds = coco_scene_dataset(scenes, "train", transforms=RandomHorizontalFlip(0.5, seed=7))
    assert [not torch.equal(flip_ds[k][0], ds[k][0]) for k in range(8)] == first[:8]


def test_collate(scenes):
    ds = coco_scene_dataset(scenes, "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == len(targets) == 3 and images[0].shape == (3, 64, 64)


def test_crowd_and_degenerate_boxes_skipped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    coco = {
        "images": [{"id": 5, "file_name": "a.png", "width": 30, "height": 20}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 9, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1,
             "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [4, 4, 0, 6], "area": 0, "iscrowd": 0,
             "segmentation": [[4, 4, 4, 10, 4, 10]]},
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [31, 2, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[31, 2, 35, 2, 35, 6, 31, 6]]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    ds = CocoDetectionDataset(tmp_path / "img", tmp_path / "ann.json")
    assert ds.category_names == ["cat", "dog"] and ds.label_to_category == {1: 3, 2: 9} and ds.num_classes == 3
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and target["image_id"] == 5
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[2, 3, 12, 8]]
    assert target["masks"].shape == (1, 20, 30)


def test_missing_files(tmp_path, scenes):
    with pytest.raises(FileNotFoundError, match="images/test"):
        coco_scene_dataset(scenes, "test")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoDetectionDataset(tmp_path / "nope", scenes / "annotations" / "instances_val.json")
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDetectionDataset(scenes / "images" / "val", tmp_path / "nope.json")


def _ground_truth_predictions(ds: CocoDetectionDataset, shift: float = 0.0) -> list[dict]:
    preds = []
    for index in range(len(ds)):
        target = ds.target(index)
        boxes = target["boxes"].clone()
        boxes[:, 0::2] += shift
        n = len(boxes)
        preds.append({
            "image_id": target["image_id"], "boxes": boxes, "labels": target["labels"], "scores": torch.ones(n),
            "masks": target["masks"].float()[:, None] * 0.9,  # (n, 1, H, W) probabilities, as Mask R-CNN's
        })
    return preds


def test_coco_evaluate(scenes):
    ds = coco_scene_dataset(scenes, "val")
    gt = load_coco(scenes / "annotations" / "instances_val.json")
    perfect = coco_evaluate(gt, _ground_truth_predictions(ds), ds.label_to_category)
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AR100"):
        assert perfect[key] == pytest.approx(1.0), key
    assert "Average Precision" in perfect.summary and all(isinstance(v, float) for v in perfect.values())
    json.dumps(perfect)
    shifted = coco_evaluate(gt, _ground_truth_predictions(ds, shift=4.0), ds.label_to_category, iou_types=("bbox",))
    assert set(shifted) == {k for k in perfect if k.startswith("bbox_")}
    assert shifted["bbox_AP"] < 0.9 and shifted["bbox_AP"] < shifted["bbox_AP50"]
    empty = [{"image_id": i, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "scores": torch.zeros(0), "masks": torch.zeros(0, 1, 64, 64)} for i in ds.ids]
    none = coco_evaluate(gt, empty, ds.label_to_category)
    assert set(none) == set(perfect) and all(v == 0.0 for v in none.values())
    assert coco_evaluate(gt, [], ds.label_to_category)["segm_AP"] == 0.0
    # one image's ground truth as predictions, evaluated on that image only
    one = coco_evaluate(gt, _ground_truth_predictions(ds)[:1], ds.label_to_category, iou_types=("segm",))
    assert one["segm_AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="masks"):
        coco_evaluate(gt, [{k: v for k, v in p.items() if k != "masks"} for p in _ground_truth_predictions(ds)],
                      ds.label_to_category)
