"""Segmentation data (generic and Cityscapes layouts, joint augmentation, collate) and the confusion-matrix metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from involution.tasks.dense.scenes import make_scenes
from involution.tasks.segmentation import (
    CITYSCAPES_CLASSES,
    ConfusionMatrix,
    SegmentationAugment,
    SegmentationFolderDataset,
    segmentation_collate,
)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("seg") / "s", "digits", num_train=4, num_val=2, image_size=64, seed=2)


def test_generic_layout(scenes):
    ds = SegmentationFolderDataset(scenes, "train")
    assert ds.layout == "generic" and len(ds) == 4 and ds.num_classes == 11 and ds.classes[0] == "background"
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
    assert label.dtype == torch.int64 and label.shape == (64, 64)
    assert 0 <= label.min() and label.max() < 11 and (label > 0).any()
    images, labels = segmentation_collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and labels.shape == (2, 64, 64)


def test_cityscapes_layout(tmp_path):
    for split, city in (("train", "aachen"), ("val", "lindau")):
        (tmp_path / "leftImg8bit" / split / city).mkdir(parents=True)
        (tmp_path / "gtFine" / split / city).mkdir(parents=True)
        for i in range(2):
            stem = f"{city}_000000_00000{i}"
            Image.fromarray(np.full((8, 16, 3), 40 * i, np.uint8)).save(
                tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            label = np.full((8, 16), 255, np.uint8)
            label[:, :8] = 18
            Image.fromarray(label).save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
    ds = SegmentationFolderDataset(tmp_path, "val")
    assert ds.layout == "cityscapes" and len(ds) == 2 and ds.classes == list(CITYSCAPES_CLASSES)
    assert ds.num_classes == 19 and ds.ignore_index == 255
    image, label = ds[1]
    assert image.shape == (3, 8, 16) and torch.allclose(image, torch.full_like(image, 40 / 255))
    assert set(label.unique().tolist()) == {18, 255}
    next(iter(tmp_path.glob("gtFine/train/aachen/*.png"))).unlink()
    with pytest.raises(FileNotFoundError, match="createTrainIdLabelImgs"):
        SegmentationFolderDataset(tmp_path, "train")


def test_layout_errors(tmp_path, scenes):
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        SegmentationFolderDataset(tmp_path, "train")
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="classes.json"):
        SegmentationFolderDataset(tmp_path, "train")
    (tmp_path / "classes.json").write_text('["a", "b"]')
    with pytest.raises(FileNotFoundError, match="label folder"):
        SegmentationFolderDataset(tmp_path, "train")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "train" / "x.jpg")
    with pytest.raises(FileNotFoundError, match="x.png"):
        SegmentationFolderDataset(tmp_path, "train")


def test_augment(scenes):
    ds = SegmentationFolderDataset(scenes, "train")
    image, label = ds[0]
    flipped, flabel = SegmentationAugment(flip=1.0)(image, label, key=0)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(flabel, label.flip(-1))
    same = SegmentationAugment(flip=0.0)(image, label, key=0)
    assert torch.equal(same[0], image) and torch.equal(same[1], label)
    aug = SegmentationAugment(flip=0.5, scale=(0.5, 2.0), crop_size=48, seed=3)
    shapes = set()
    for key in range(6):
        a, b = aug(image, label, key=key), aug(image, label, key=key)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded per key
        assert a[0].shape == (3, 48, 48) and a[1].shape == (48, 48) and a[1].dtype == torch.int64
        values = set(a[1].unique().tolist())
        assert values <= set(label.unique().tolist()) | {255}  # nearest-neighbour labels, padding ignored
        shapes.add(a[0].sum().item())
    assert len(shapes) > 1
    # a crop larger than the image pads the label with the ignore index
    big_image, big_label = SegmentationAugment(flip=0.0, crop_size=(80, 70))(image, label, key=0)
    assert big_image.shape == (3, 80, 70) and (big_label == 255).sum() == 80 * 70 - 64 * 64
    # through the data set, keyed by index: a batch of crops collates
    crops = SegmentationFolderDataset(scenes, "train", transforms=SegmentationAugment(0.5, (0.75, 1.25), 32))
    images, labels = segmentation_collate([crops[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32)
    with pytest.raises(ValueError, match="different sizes"):
        segmentation_collate([(torch.zeros(3, 4, 4), torch.zeros(4, 4)), (torch.zeros(3, 5, 4), torch.zeros(5, 4))])


def _brute_force(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> dict:
    keep = target != ignore
    p, t = pred[keep], target[keep]
    ious, accs = [], []
    for c in range(k):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union if union else math.nan)
        accs.append(inter / np.sum(t == c) if np.sum(t == c) else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    counted = [v for v in accs if not math.isnan(v)]
    return {
        "iou": ious,
        "mIoU": float(np.mean(present)) if present else 0.0,
        "mean_acc": float(np.mean(counted)) if counted else 0.0,
        "pixel_acc": float(np.mean(p == t)) if len(t) else 0.0,
    }


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    batches=st.integers(1, 3),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    seed=st.integers(0, 2**31 - 1),
)
def test_metrics_match_brute_force(k, batches, shape, seed):
    rng = np.random.default_rng(seed)
    metric = ConfusionMatrix(k)
    preds, targets = [], []
    for _ in range(batches):
        pred = rng.integers(0, k, size=shape)
        target = np.where(rng.random(shape) < 0.2, 255, rng.integers(0, k, size=shape))
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred)
        targets.append(target)
    got = metric.compute()
    want = _brute_force(np.concatenate(preds), np.concatenate(targets), k, 255)
    np.testing.assert_allclose(got["iou"], want["iou"], equal_nan=True)
    for key in ("mIoU", "mean_acc", "pixel_acc"):
        assert got[key] == pytest.approx(want[key]), key


def test_metric_ignore_merge_and_errors():
    target = torch.tensor([[0, 1, 255], [2, 2, 255]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 1]])  # the ignored pixels' predictions do not count
    metric = ConfusionMatrix(4)
    metric.update(pred, target)
    out = metric.compute()
    # class 0: 1 hit, 1 false positive; class 2: 1 hit, 1 miss; class 3 in neither: NaN, left out of the mean
    assert out["iou"][:3] == [0.5, 1.0, 0.5] and math.isnan(out["iou"][3])
    assert out["mIoU"] == pytest.approx(2 / 3) and out["pixel_acc"] == pytest.approx(0.75)
    assert out["mean_acc"] == pytest.approx((1 + 1 + 0.5) / 3)
    other = ConfusionMatrix(4)
    other.update(pred[:1], target[:1])
    whole = ConfusionMatrix(4)
    whole.update(torch.cat([pred, pred[:1]]), torch.cat([target, target[:1]]))
    assert torch.equal(metric.merge(other).matrix, whole.matrix)
    assert torch.equal(metric.all_reduce().matrix, whole.matrix)  # no process group: unchanged
    metric.reset()
    assert metric.compute()["mIoU"] == 0.0 and metric.matrix.sum() == 0
    with pytest.raises(ValueError, match="target values"):
        metric.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="pred values"):
        metric.update(torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(TypeError, match="argmax"):
        metric.update(torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


def test_scene_labels_score_perfectly(scenes):
    ds = SegmentationFolderDataset(scenes, "val")
    metric = ConfusionMatrix(ds.num_classes)
    for i in range(len(ds)):
        label = ds[i][1]
        metric.update(label[None], label[None])
    out = metric.compute()
    assert out["mIoU"] == 1.0 and out["pixel_acc"] == 1.0 and out["mean_acc"] == 1.0
