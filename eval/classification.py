"""Zero-shot classification of a class-folder tree (ImageNet layout) with a stage-1 run.

    python eval/classification.py --checkpoint runs/stage1 --image-dir imagenet/val --out cls.json \
        [--templates "a photo of a {}." ...] [--batch-size 64]

Class names are the folder names with underscores as spaces. Each class's prompt embeddings (one per
template; default: CLIP's 7-template ensemble) are averaged into one classifier vector; an image gets
the class of highest cosine. Reports acc@1, acc@5 and mean per-class recall (percent). Unreadable
images are skipped and counted (--strict stops instead). The protocol: spark_vlm/evaluation/classification.py.
"""
import argparse

from spark_vlm.data.images import BadSample
from spark_vlm.evaluation.classification import classification_report
from spark_vlm.evaluation.report import write_report
from spark_vlm.evaluation.stage1_run import CLIP_TEMPLATES


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--image-dir", required=True, help="root/class_name/*.jpg")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--templates", nargs="+", default=list(CLIP_TEMPLATES), help="prompt templates with {}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)
    try:
        report = classification_report(args.checkpoint, args.image_dir, args.templates, args.batch_size, args.strict)
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, f"error: {e}\n")
    write_report(report, args.out)
    return report.result


if __name__ == "__main__":
    main()
