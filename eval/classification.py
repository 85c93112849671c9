"""Zero-shot classification of a class-folder tree (ImageNet layout) with a stage-1 run.

    python eval/classification.py --checkpoint runs/stage1 --image-dir imagenet/val --out cls.json \
        [--class-names names.txt | imagenet] [--templates imagenet80 | clip7 | "a photo of a {}." ...]

Class names: --class-names (one name a line, line i naming the i-th class folder in sorted order; `imagenet`:
the bundled ImageNet-1k names), else the bundled ImageNet names for a tree of the 1000 WordNet-id folders
(n01440764, ...), else the folder names with underscores as spaces. Templates: a bundled set (imagenet80, the
default: CLIP's 80 ImageNet templates; clip7: CLIP's 7-template subset) or your own templates with {}; the
report says which. Each class's prompt embeddings are averaged into one classifier vector; an image gets the
class of highest cosine. Reports acc@1, acc@5 and mean per-class recall (percent) beside chance. Unreadable
images are skipped and counted (--strict stops instead). The protocol: spark_vlm/evaluation/classification.py.
"""
import argparse

from spark_vlm.evaluation.classification import classification_report
from spark_vlm.evaluation.report import report_or_exit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--image-dir", required=True, help="root/class_folder/*.jpg")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--class-names", help="file with one class name a line (sorted folder order), or imagenet")
    parser.add_argument("--templates", nargs="+", default=["imagenet80"],
                        help="a bundled set (imagenet80, clip7) or prompt templates with {} (default: imagenet80)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: classification_report(
        args.checkpoint, args.image_dir, args.templates, args.class_names, args.batch_size, args.strict),
        args.out)


if __name__ == "__main__":
    main()
