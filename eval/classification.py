"""Zero-shot classification of a class-folder tree (ImageNet layout) with a stage-1 run.

    python eval/classification.py --checkpoint runs/stage1 --image-dir imagenet/val --out cls.json \
        [--templates "a photo of a {}." ...] [--batch-size 64]

Class names are the folder names with underscores as spaces. Each class's prompt embeddings (one per
template; default: CLIP's 7-template ensemble) are averaged into one classifier vector; an image gets
the class of highest cosine. Reports acc@1, acc@5 and mean per-class recall (percent). Unreadable
images are skipped and counted (--strict stops instead).
"""
import argparse
import sys

from spark_vlm.data.images import SkipCounter
from spark_vlm.data.readers import load_pairs, read_class_folders
from spark_vlm.evaluation import (CLIP_TEMPLATES, encode_images, encode_prompts, load_checkpoint, skip_summary,
                                  write_report)
from spark_vlm.metrics.classification import classification_metrics, zero_shot_classifier


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--image-dir", required=True, help="root/class_name/*.jpg")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--templates", nargs="+", default=list(CLIP_TEMPLATES), help="prompt templates with {}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)
    if any("{}" not in t for t in args.templates):
        parser.error("every template needs a {} for the class name")

    try:
        model, tok = load_checkpoint(args.checkpoint)
        records, class_names = read_class_folders(args.image_dir)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if not class_names:
        sys.exit(f"error: no class folders in {args.image_dir}")
    counter = SkipCounter(what="images")
    images, _, kept = load_pairs(records, model.config.image_size, strict=args.strict, counter=counter,
                                 require_captions=False)
    labels = [records[i]["label"] for i in kept]  # image_id = record index for class folders

    names = [c.replace("_", " ") for c in class_names]
    classifier = zero_shot_classifier(encode_prompts(model, tok, names, args.templates, args.batch_size))
    logits = encode_images(model, images, args.batch_size) @ classifier.t()
    metrics = classification_metrics(logits, labels, ks=(1, 5))

    result = {"checkpoint": args.checkpoint, "data": args.image_dir, "num_classes": len(names),
              "num_templates": len(args.templates), **metrics, "class_names": names,
              "skipped": skip_summary(counter)}
    write_report(args.out, result, "Zero-shot classification")
    return result


if __name__ == "__main__":
    main()
