"""COCO evaluation (pycocotools) of torchvision-style detection outputs: box AP and mask AP.

Metric keys, each a float in [0, 1] (pycocotools' ``stats``; -1.0 where the ground truth has no object of that size
range): ``{type}_AP`` (IoU 0.50:0.95), ``{type}_AP50``, ``{type}_AP75``, ``{type}_AP_small``, ``{type}_AP_medium``,
``{type}_AP_large``, ``{type}_AR1``, ``{type}_AR10``, ``{type}_AR100``, for ``type`` in "bbox", "segm".
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["METRIC_NAMES", "CocoMetrics", "coco_evaluate", "to_coco_results"]

METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100")
IOU_TYPES = ("bbox", "segm")


class CocoMetrics(dict):
    """``{key: float}`` of :func:`coco_evaluate`, with pycocotools' printed summary in :attr:`summary`."""

    summary: str = ""


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def to_coco_results(
    predictions: Sequence[Mapping[str, Any]], label_to_category: Mapping[int, int], iou_type: str,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """COCO result entries of one IoU type from per-image predictions (see :func:`coco_evaluate`).

    "bbox": ``{image_id, category_id, bbox [x, y, w, h], score}``; "segm": ``{image_id, category_id, segmentation
    (RLE, counts as str), score}`` with masks binarised at 0.5.
    """
    from pycocotools import mask as mask_utils

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    results: list[dict[str, Any]] = []
    for pred in predictions:
        image_id = int(pred["image_id"])
        scores = _numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(pred["labels"]).astype(np.int64).reshape(-1)
        if len(scores) != len(labels):
            raise ValueError(f"image {image_id}: {len(scores)} scores but {len(labels)} labels")
        try:
            categories = [int(label_to_category[int(label)]) for label in labels]
        except KeyError as err:
            raise ValueError(f"image {image_id}: label {err.args[0]} not in label_to_category") from None
        if iou_type == "bbox":
            boxes = _numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
            if len(boxes) != len(scores):
                raise ValueError(f"image {image_id}: boxes (n, 4) has {len(boxes)} rows, scores {len(scores)}")
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            for box, cat, score in zip(xywh.tolist(), categories, scores.tolist()):
                results.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
            continue
        if len(scores) == 0:
            continue
        if "masks" not in pred:
            raise ValueError(
                f"image {image_id}: no 'masks' in the prediction for iou_type 'segm' (pass iou_types=('bbox',) "
                "for a box-only model)"
            )
        masks = _numpy(pred["masks"])
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.ndim != 3 or len(masks) != len(scores):
            raise ValueError(f"image {image_id}: masks must be (n, 1, H, W) or (n, H, W) with n={len(scores)}, got {masks.shape}")
        if image_sizes is not None and image_id in image_sizes and tuple(masks.shape[1:]) != tuple(image_sizes[image_id]):
            raise ValueError(f"image {image_id}: masks are {masks.shape[1:]}, the image is {image_sizes[image_id]} (H, W)")
        binary = np.asfortranarray((masks > 0.5).astype(np.uint8).transpose(1, 2, 0))
        for rle, cat, score in zip(mask_utils.encode(binary), categories, scores.tolist()):
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": image_id, "category_id": cat, "segmentation": rle, "score": score})
    return results


def coco_evaluate(
    coco_gt: Any, predictions: Sequence[Mapping[str, Any]], label_to_category: Mapping[int, int],
    iou_types: Sequence[str] = IOU_TYPES, image_ids: Sequence[int] | None = None,
) -> CocoMetrics:
    """COCO box / mask AP of ``predictions`` against ``coco_gt`` (a ``pycocotools.coco.COCO``).

    ``predictions``: one dict per evaluated image, ``image_id`` (the file's id), ``boxes`` ``(n, 4)`` as
    ``(x1, y1, x2, y2)``, ``scores`` ``(n,)``, ``labels`` ``(n,)`` contiguous (mapped to category ids through
    ``label_to_category``, e.g. :attr:`CocoDetectionDataset.label_to_category`), and for "segm" ``masks``
    ``(n, 1, H, W)`` probabilities (torchvision's Mask R-CNN) or ``(n, H, W)``, at the image's size. Tensors or
    arrays. Evaluated images: ``image_ids``, else every ``image_id`` in ``predictions`` (an image predicted with
    no boxes still counts). No detections at all give zeros (pycocotools cannot load an empty result).

    Returns :class:`CocoMetrics`: floats in [0, 1] keyed ``{iou_type}_{name}`` for ``name`` in
    :data:`METRIC_NAMES`, and pycocotools' summary lines in ``.summary``.
    """
    from pycocotools.cocoeval import COCOeval

    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_types must be drawn from {IOU_TYPES}, got {iou_type!r}")
    image_ids = sorted({int(i) for i in (image_ids if image_ids is not None else (p["image_id"] for p in predictions))})
    unknown = set(image_ids) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"image ids not in the ground truth: {sorted(unknown)[:10]}")
    sizes = {i: (int(coco_gt.imgs[i]["height"]), int(coco_gt.imgs[i]["width"])) for i in image_ids}
    metrics = CocoMetrics()
    summary: list[str] = []
    for iou_type in iou_types:
        results = to_coco_results(predictions, label_to_category, iou_type, sizes)
        if not results or not image_ids:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in METRIC_NAMES})
            summary.append(f"{iou_type}: no detections, every metric 0")
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes writes into its entries
            evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
        lines = io.StringIO()
        with contextlib.redirect_stdout(lines):
            evaluator.summarize()
        summary.append(f"{iou_type}:\n{lines.getvalue().rstrip()}")
        metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)})
    metrics.summary = "\n".join(summary)
    return metrics
