"""Zero-shot segmentation: patch scores -> a label map, and mIoU from a confusion matrix.

The protocol (the SPARC paper): every patch gets the class, among the image's ground-truth classes,
whose text embedding is most similar to the patch's dense embedding; the patch label map is upsampled
(nearest) to the mask resolution and compared with the mask. mIoU is the mean IoU over the foreground
classes present (in the ground truth or the prediction); background (0) is excluded from the mean unless
asked for, and pixels marked `ignore_index` (VOC's 255 object borders) are left out of everything.

As in the VOC devkit, IoUs are computed from one confusion matrix accumulated over the whole dataset
(not averaged per image), so a class's IoU weighs every pixel equally. Pure functions: arrays in,
numbers out.
"""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[num_classes, num_classes] int64 counts; rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_index` are dropped. Any other value outside 0..num_classes-1
    (in either map) is an error rather than silently dropped, because it means the class list is wrong.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    keep = gt != ignore_index
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    for name, values in (("prediction", p), ("ground truth", g)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds a class outside 0..{num_classes - 1}")
    return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def miou_from_confusion(conf, background: int | None = 0) -> dict:
    """mIoU (percent) over the classes present, from a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class with TP + FP + FN = 0 (absent from both the ground truth and
    the prediction) has no IoU (None) and is left out of the mean; so is `background` (None keeps it).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp  # TP + FP + FN
    per_class = [float(100.0 * tp[c] / union[c]) if union[c] > 0 else None for c in range(len(conf))]
    counted = [iou for c, iou in enumerate(per_class) if iou is not None and c != background]
    return {"miou": float(np.mean(counted)) if counted else float("nan"),
            "per_class_iou": per_class, "num_classes_counted": len(counted)}


def miou(pred, gt, num_classes: int, ignore_index: int = 255, background: int | None = 0) -> dict:
    """mIoU of one label map, or of a list of label maps pooled into one confusion matrix."""
    if isinstance(pred, (list, tuple)):
        if len(pred) != len(gt):
            raise ValueError(f"{len(pred)} predictions but {len(gt)} ground-truth maps")
        conf = sum((confusion_matrix(p, g, num_classes, ignore_index) for p, g in zip(pred, gt)),
                   np.zeros((num_classes, num_classes), dtype=np.int64))
    else:
        conf = confusion_matrix(pred, gt, num_classes, ignore_index)
    return miou_from_confusion(conf, background)


def segment_patches(patch_scores, grid: tuple[int, int], out_hw: tuple[int, int], class_ids) -> np.ndarray:
    """Label map [H, W] from patch scores [P, K] over an image's K candidate classes.

    `grid` = (rows, cols) of the patch grid, P = rows * cols in row-major order (the ViT's order). Each
    patch takes its argmax class (`class_ids[k]`; a tie goes to the first candidate), then the patch label
    grid is upsampled to `out_hw` by nearest neighbour: pixel (y, x) takes patch (y * rows // H,
    x * cols // W). Argmax first, then upsampling (not upsampling the scores) is the protocol of the SPARC
    paper: a pixel's label is its patch's label.
    """
    scores = torch.as_tensor(patch_scores).detach().cpu().double().numpy()
    class_ids = np.asarray(class_ids, dtype=np.int64)
    rows, cols = grid
    if scores.ndim != 2 or scores.shape[0] != rows * cols:
        raise ValueError(f"patch_scores must be [rows*cols={rows * cols}, K], got {tuple(scores.shape)}")
    if scores.shape[1] != len(class_ids) or len(class_ids) == 0:
        raise ValueError(f"{scores.shape[1]} score columns but {len(class_ids)} class ids")
    labels = class_ids[scores.argmax(axis=1)].reshape(rows, cols)  # numpy argmax: first maximum wins
    h, w = out_hw
    return labels[(np.arange(h) * rows // h)[:, None], (np.arange(w) * cols // w)[None, :]]
