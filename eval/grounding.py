"""Word grounding against ground-truth masks: mass-in-mask and pointing of each shape/colour word's
token-to-patch weights, beside the uniform, position-only and blank-image baselines, plus the shortcut
diagnostics (L_f with the matched / another / blank image and the position-only patches).

    python eval/grounding.py --checkpoint runs/stage1 --out grounding.json          # built-in scenes, test split

Works for SPARK, CLIP and FILIP checkpoints alike (the same SPARC readout of their token and patch embeddings).
The protocol: spark_vlm/evaluation/grounding.py.
"""
import argparse

from spark_vlm.evaluation.grounding import grounding_report
from spark_vlm.evaluation.report import report_or_exit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--num-images", type=int, default=500, help="built-in test scenes (default 500)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: grounding_report(
        args.checkpoint, args.num_images, args.batch_size), args.out)


if __name__ == "__main__":
    main()
