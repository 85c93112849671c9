"""Zero-shot semantic segmentation (mIoU) with a stage-1 run, as in the SPARC paper.

    python eval/segmentation.py --checkpoint runs/stage1 --voc-root VOCdevkit/VOC2012 --out seg.json \
        [--split val] [--class-names aeroplane,bicycle,...] [--templates ...]
    python eval/segmentation.py --checkpoint runs/stage1 --out seg.json     # built-in scenes, test split

Each patch's dense embedding (h_v then g_v) is compared with the prompt embeddings of the classes
present in the image's mask; the argmax per patch, upsampled (bilinear on the scores) to the mask,
is the prediction. mIoU over the foreground classes present, from one confusion matrix over the set.
Also reported: the same over images with >= 2 foreground classes (with one class the argmax is
trivially right on the object), and with ground-truth background pixels ignored.

VOC images are resized and center-cropped to the model's input (the CLIP preprocessing), so the
prediction is compared with the center square of the mask, at the mask's own resolution. Built-in
scene masks: class index = SHAPES index + 1, 0 = background. Mask indices 1..N name --class-names.
"""
import argparse
import sys

import numpy as np
import torch

from spark_vlm.data.images import BadSample, SkipCounter, handle_bad
from spark_vlm.data.readers import VOC_CLASSES, VOC_IGNORE, load_pairs, load_voc_mask, read_voc_segmentation
from spark_vlm.data.scene_vocab import SHAPES
from spark_vlm.evaluation import (CLIP_TEMPLATES, SCENE_TEMPLATES, builtin_scenes, encode_prompts, iter_pixel_batches,
                                  load_checkpoint, scene_images, skip_summary, write_report)
from spark_vlm.metrics.classification import zero_shot_classifier
from spark_vlm.metrics.segmentation import confusion_matrix, miou_from_confusion, segment_patches

READABLE_VOC = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def scene_data(num_images: int, image_size: int):
    scenes = builtin_scenes("test", num_images, image_size)
    masks = []
    for s in scenes:
        mask = np.zeros((image_size, image_size), dtype=np.uint8)
        for o in s["objects"]:  # visible masks are disjoint
            mask[o["mask"]] = SHAPES.index(o["shape"]) + 1
        masks.append(mask)
    return scene_images(scenes, image_size), masks, None


def voc_data(voc_root: str, split: str, image_size: int, num_classes: int, strict: bool):
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--voc-root", help="VOC tree with JPEGImages, SegmentationClass, ImageSets "
                                           "(default: the built-in scenes)")
    parser.add_argument("--split", default="val", help="VOC split file (default: val)")
    parser.add_argument("--class-names", help="comma-separated names of mask indices 1..N "
                                              "(default: the 20 VOC classes)")
    parser.add_argument("--templates", nargs="+", help="prompt templates with {} (default: CLIP's 7 for VOC, "
                                                       "scene phrasings for the built-in scenes)")
    parser.add_argument("--num-images", type=int, default=500, help="built-in scenes only (default 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)

    try:
        model, tok = load_checkpoint(args.checkpoint)
        size = model.config.image_size
        if args.voc_root:
            names = ([n.strip() for n in args.class_names.split(",")] if args.class_names
                     else [READABLE_VOC.get(c, c) for c in VOC_CLASSES[1:]])
            images, masks, counter = voc_data(args.voc_root, args.split, size, len(names) + 1, args.strict)
            templates, data = args.templates or CLIP_TEMPLATES, f"{args.voc_root} ({args.split})"
        else:
            names = list(SHAPES)
            images, masks, counter = scene_data(args.num_images, size)
            templates, data = args.templates or SCENE_TEMPLATES, f"built-in scenes, test split, {len(masks)} images"
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")

    num_classes = len(names) + 1  # + background
    text = zero_shot_classifier(encode_prompts(model, tok, names, templates))  # [C, D], class k + 1
    grid = (size // model.config.patch_size,) * 2
    conf = {key: np.zeros((num_classes, num_classes), dtype=np.int64) for key in ("all", "multi", "fg_pixels")}
    num_multi = num_without_fg = 0
    with torch.no_grad():
        for start, px in iter_pixel_batches(images, args.batch_size, "segment"):
            scores = model.dense_image_embeddings(px).float().cpu() @ text.t()  # [b, P, C] cosines
            for b in range(len(scores)):
                gt = masks[start + b]
                present = sorted(set(np.unique(gt).tolist()) - {0, VOC_IGNORE})
                if not present:  # nothing to segment: the protocol scores the classes present
                    num_without_fg += 1
                    continue
                pred = segment_patches(scores[b][:, [c - 1 for c in present]], grid, gt.shape, present)
                c = confusion_matrix(pred, gt, num_classes, VOC_IGNORE)
                conf["all"] += c
                conf["fg_pixels"] += confusion_matrix(pred, np.where(gt == 0, VOC_IGNORE, gt), num_classes, VOC_IGNORE)
                if len(present) >= 2:
                    conf["multi"] += c
                    num_multi += 1

    overall = miou_from_confusion(conf["all"])
    result = {"checkpoint": args.checkpoint, "data": data, "num_images": len(masks),
              "num_images_without_foreground": num_without_fg, "num_images_multiclass": num_multi,
              "mIoU": overall["miou"], "mIoU_multiclass": miou_from_confusion(conf["multi"])["miou"],
              "mIoU_foreground_pixels": miou_from_confusion(conf["fg_pixels"])["miou"],
              "per_class_IoU": {n: overall["per_class_iou"][k + 1] for k, n in enumerate(names)},
              "templates": list(templates), "skipped": skip_summary(counter)}
    write_report(args.out, result, "Zero-shot segmentation")
    return result


if __name__ == "__main__":
    main()
