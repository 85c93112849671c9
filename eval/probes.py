"""Fine-grained probes (SugarCrepe-style): does the model prefer the true caption to a one-detail edit?

    python eval/probes.py --checkpoint runs/stage1 --out probes.json          # built-in scenes, test split
    python eval/probes.py --checkpoint runs/stage1 --instances instances_val2017.json --image-dir val2017 \
        [--annotations captions_val2017.json] --out probes.json

Probes (count, color_binding, relation_swap, absent_object) are written from the ground-truth objects
(spark_vlm/data/probes.py). An item is passed when the global image-text similarity of the true
caption is strictly above that of its negative; accuracy per type is reported next to its chance level.
The image list comes from --annotations when given, else from --instances. Unreadable images are
skipped and counted (--strict stops instead).
"""
import argparse
import json
import sys

from spark_vlm.data.images import SkipCounter
from spark_vlm.data.probes import PROBE_TYPES, build_probes, coco_objects, probe_accuracy, scene_objects
from spark_vlm.data.readers import load_pairs, read_coco_captions
from spark_vlm.data.scene_vocab import SHAPES
from spark_vlm.evaluation import (builtin_scenes, encode_images, encode_texts, load_checkpoint, scene_images,
                                  skip_summary, write_report)


def load_data(args, image_size: int):
    """(images, image_ids, {image_id: objects}, vocabulary, data description, skip counter)."""
    if not args.instances:
        scenes = builtin_scenes("test", args.num_images, image_size)
        objects = {s["image_id"]: scene_objects(s) for s in scenes}
        return (scene_images(scenes, image_size), list(objects), objects, list(SHAPES),
                f"built-in scenes, test split, {len(scenes)} images", None)
    if not args.image_dir:
        raise ValueError("--image-dir is required with --instances")
    with open(args.instances, encoding="utf-8") as f:
        objects, vocabulary = coco_objects(json.load(f))
    records = [{**r, "captions": []} for r in read_coco_captions(args.annotations or args.instances, args.image_dir)]
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, image_size, strict=args.strict, counter=counter, require_captions=False)
    return images, ids, {i: objects.get(i, []) for i in ids}, vocabulary, args.instances, counter


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--instances", help="COCO instances JSON (default: built-in scenes)")
    parser.add_argument("--annotations", help="COCO captions JSON naming the images (optional)")
    parser.add_argument("--image-dir", help="folder of the images")
    parser.add_argument("--num-images", type=int, default=500, help="built-in scenes only (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe construction")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)

    try:
        model, tok = load_checkpoint(args.checkpoint)
        images, ids, objects, vocabulary, data, counter = load_data(args, model.config.image_size)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
    items, skipped = build_probes(objects, vocabulary, seed=args.seed)

    # Encode every distinct text once; score = cosine of the item's image with each text.
    texts = sorted({t for it in items for t in [it["positive"], *it["negatives"]]})
    column = {t: j for j, t in enumerate(texts)}
    row = {image_id: i for i, image_id in enumerate(ids)}
    sim = (encode_images(model, images, args.batch_size) @ encode_texts(model, tok, texts).t()).numpy()
    pos = [sim[row[it["image_id"]], column[it["positive"]]] for it in items]
    neg = [[sim[row[it["image_id"]], column[t]] for t in it["negatives"]] for it in items]
    scores = probe_accuracy(items, pos, neg)

    result = {"checkpoint": args.checkpoint, "data": data, "num_images": len(ids), "num_items": len(items),
              **scores, "skipped_probes": skipped, "skipped": skip_summary(counter),
              "examples": [next(it for it in items if it["type"] == t) for t in PROBE_TYPES
                           if any(it["type"] == t for it in items)]}
    rows = [{"probe": t, "accuracy": v["accuracy"], "chance": v["chance"], "items": v["num_items"],
             "skipped images": skipped.get(t, 0)} for t, v in scores["per_type"].items()]
    rows.append({"probe": "mean", "accuracy": scores["mean_accuracy"], "chance": "", "items": len(items),
                 "skipped images": ""})
    write_report(args.out, result, "Fine-grained probes", rows)
    return result


if __name__ == "__main__":
    main()
