"""POPE-style object probing of a stage-2 captioner (random / popular / adversarial negatives).

    python eval/pope.py --checkpoint runs/stage2 --instances data/scenes/annotations/instances_test.json \
        --image-dir data/scenes/test --out pope.json [--settings random popular adversarial] [--shots 2]

Ground truth = the instance annotations' categories. Reports accuracy, precision, recall, F1 and the
yes-ratio per setting (percent), written as JSON, with a markdown table printed.
The protocol: spark_vlm/evaluation/pope.py; question sampling and scores: spark_vlm/metrics/pope.py.
"""
import argparse

from spark_vlm.data.images import BadSample
from spark_vlm.evaluation.pope import pope_report
from spark_vlm.evaluation.report import write_report
from spark_vlm.metrics.pope import SETTINGS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--instances", required=True, help="COCO instances JSON (the ground-truth objects)")
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--num-images", type=int, default=100, help="images to ask about (first N with enough objects)")
    parser.add_argument("--shots", type=int, default=2, help="few-shot examples before each question (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        report = pope_report(args.checkpoint, args.instances, args.image_dir, args.settings, args.num_images,
                             args.shots, args.seed, args.batch_size)
    except (OSError, ValueError, BadSample) as e:
        parser.exit(2, f"error: {e}\n")
    write_report(report, args.out)
    return report.result


if __name__ == "__main__":
    main()
