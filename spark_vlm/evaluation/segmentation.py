"""Zero-shot semantic segmentation (mIoU) with a stage-1 run, under two labelled protocols.

Each patch's dense embedding (h_v then g_v) is compared with the class prompt embeddings; each patch takes its
argmax class and the patch labels are upsampled (nearest) to the mask. IoUs come from one confusion matrix over
the set. Two protocols, each reported under its own key:
- `paper_protocol` (the SPARC paper): the candidates are the foreground classes present in the image's mask;
  ground-truth background pixels are ignored; mIoU over the foreground classes. Images without a foreground
  class are left out (counted). Also given over the images with >= 2 foreground classes (with one class the
  argmax is trivially right everywhere).
- `standard_protocol` (VOC with background, as in MaskCLIP-style zero-shot evaluations): the candidates are all
  classes plus a "background" prompt, on every image and every pixel; mIoU over all classes incl. background.

VOC images are resized and center-cropped to the model's input (the CLIP preprocessing), so the prediction is
compared with the center square of the mask, at the mask's own resolution. Built-in scene masks: class index =
SHAPES index + 1, 0 = background. Mask indices 1..N name `class_names`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.images import BadSample, SkipCounter, handle_bad
from ..data.readers import VOC_CLASSES, VOC_IGNORE, load_pairs, load_voc_mask, read_voc_segmentation
from ..data.scene_vocab import SHAPES
from ..metrics.classification import zero_shot_classifier
from ..metrics.segmentation import confusion_matrix, miou_from_confusion, segment_patches
from .data import builtin_scenes, scene_images
from .report import Report, skip_summary
from .class_prompts import resolve_templates
from .stage1_run import SCENE_TEMPLATES, iter_pixel_batches, load_stage1_run, prompt_embeddings

BACKGROUND = "background"  # the standard protocol's prompt for class 0
READABLE_VOC = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def scene_data(num_images: int, image_size: int):
    """(images, masks, no skip counter) of the first built-in test scenes."""
    scenes = builtin_scenes("test", num_images, image_size)
    masks = []
    for s in scenes:
        mask = np.zeros((image_size, image_size), dtype=np.uint8)
        for o in s["objects"]:  # visible masks are disjoint
            mask[o["mask"]] = SHAPES.index(o["shape"]) + 1
        masks.append(mask)
    return scene_images(scenes, image_size), masks, None


def voc_data(voc_root: str, split: str, image_size: int, num_classes: int, strict: bool):
    """(images, center squares of their masks, skip counter) of a VOC segmentation split."""
    records = read_voc_segmentation(voc_root, split)
    counter = SkipCounter(what="images")
    images, _, kept = load_pairs([{"image_id": r["image_id"], "path": r["image_path"], "captions": []}
                                  for r in records], image_size, strict=strict, counter=counter,
                                 require_captions=False)
    keep, masks = [], []
    for row, image_id in enumerate(kept):
        path = records[image_id]["mask_path"]
        try:
            mask = load_voc_mask(path)
        except BadSample as exc:
            handle_bad(exc, counter, strict)
            continue
        labels = set(np.unique(mask).tolist()) - {VOC_IGNORE}
        if max(labels, default=0) >= num_classes:
            raise ValueError(f"{path} holds class {max(labels)} but only {num_classes - 1} class names are given")
        h, w = mask.shape
        side = min(h, w)  # the center square the resized + center-cropped image shows
        keep.append(row)
        masks.append(mask[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side])
    return images[keep], masks, counter


def segmentation_report(checkpoint, voc_root: str | None = None, split: str = "val",
                        class_names: list[str] | None = None, templates=None, num_images: int = 500,
                        batch_size: int = 32, strict: bool = False) -> Report:
    """VOC (`voc_root`; default class names: the 20 VOC classes, templates: clip7) or the built-in test
    scenes (their 8 shapes, the scene phrasings)."""
    model, tokenizer = load_stage1_run(checkpoint)
    size = model.config.image_size
    if voc_root:
        names = class_names or [READABLE_VOC.get(c, c) for c in VOC_CLASSES[1:]]
        images, masks, counter = voc_data(voc_root, split, size, len(names) + 1, strict)
        templates, template_set = resolve_templates(templates or "clip7")
        data = f"{voc_root} ({split})"
    else:
        names = list(SHAPES)
        images, masks, counter = scene_data(num_images, size)
        templates, template_set = (resolve_templates(templates) if templates else
                                   (SCENE_TEMPLATES, "scene phrasings (the built-in captions' wording)"))
        data = f"built-in scenes, test split, {len(masks)} images"

    num_classes = len(names) + 1  # + background
    # row k = class k: a "background" prompt, then the class names
    text = zero_shot_classifier(prompt_embeddings(model, tokenizer, [BACKGROUND] + names, templates))
    grid = (size // model.config.patch_size,) * 2
    conf = {key: np.zeros((num_classes, num_classes), dtype=np.int64) for key in ("paper", "multi", "standard")}
    num_multi = num_without_fg = 0
    with torch.no_grad():
        for start, px in iter_pixel_batches(images, batch_size, "segment"):
            scores = model.dense_image_embeddings(px).float().cpu() @ text.t()  # [b, P, C] cosines
            for b in range(len(scores)):
                gt = masks[start + b]
                pred = segment_patches(scores[b], grid, gt.shape, range(num_classes))
                conf["standard"] += confusion_matrix(pred, gt, num_classes, VOC_IGNORE)
                present = sorted(set(np.unique(gt).tolist()) - {0, VOC_IGNORE})
                if not present:  # nothing to segment: the paper's protocol scores the classes present
                    num_without_fg += 1
                    continue
                pred = segment_patches(scores[b][:, present], grid, gt.shape, present)
                c = confusion_matrix(pred, np.where(gt == 0, VOC_IGNORE, gt), num_classes, VOC_IGNORE)
                conf["paper"] += c
                if len(present) >= 2:
                    conf["multi"] += c
                    num_multi += 1

    paper, standard = miou_from_confusion(conf["paper"]), miou_from_confusion(conf["standard"], background=None)
    result = {"checkpoint": checkpoint, "data": data, "num_images": len(masks),
              "paper_protocol": {
                  "protocol": "candidates = the foreground classes present in the image; ground-truth background "
                              "pixels ignored; mIoU over the foreground classes",
                  "mIoU": paper["miou"], "mIoU_multiclass": miou_from_confusion(conf["multi"])["miou"],
                  "num_images": len(masks) - num_without_fg, "num_images_multiclass": num_multi,
                  "num_images_without_foreground": num_without_fg,
                  "per_class_IoU": {n: paper["per_class_iou"][k + 1] for k, n in enumerate(names)}},
              "standard_protocol": {
                  "protocol": f"candidates = all {len(names)} classes + a {BACKGROUND!r} prompt on every image; all "
                              f"pixels; mIoU over all {num_classes} classes incl. background",
                  "mIoU": standard["miou"],
                  "per_class_IoU": {n: standard["per_class_iou"][k] for k, n in enumerate([BACKGROUND] + names)}},
              "template_set": template_set, "templates": list(templates), "skipped": skip_summary(counter)}
    return Report("Zero-shot segmentation", result)
