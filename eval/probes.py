"""Fine-grained probes (SugarCrepe-style): does the model prefer the true caption to a one-detail edit?

    python eval/probes.py --checkpoint runs/stage1 --out probes.json          # built-in scenes, test split
    python eval/probes.py --checkpoint runs/stage1 --instances instances_val2017.json --image-dir val2017 \
        [--annotations captions_val2017.json] --out probes.json

Probes (count, color_binding, relation_swap, absent_object) are written from the ground-truth objects
(spark_vlm/data/probes.py), balanced so that text-only heuristics score chance. An item is passed when the
global image-text similarity of the true caption is strictly above that of its negative; accuracy per type is
reported next to its chance level and its text-only controls (the model with a blank grey image, "the shorter
caption wins", "the smaller number wins").
The image list comes from --annotations when given, else from --instances. Unreadable images are
skipped and counted (--strict stops instead). The protocol: spark_vlm/evaluation/probes.py.
"""
import argparse

from spark_vlm.evaluation.probes import probes_report
from spark_vlm.evaluation.report import report_or_exit


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

    return report_or_exit(parser, lambda: probes_report(
        args.checkpoint, args.instances, args.annotations, args.image_dir, args.num_images, args.seed,
        args.batch_size, args.strict), args.out)


if __name__ == "__main__":
    main()
