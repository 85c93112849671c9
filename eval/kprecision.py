"""Faithfulness of the top-1 retrieved caption (K-Precision, as in SPARC) with a stage-1 run.

    python eval/kprecision.py --checkpoint runs/stage1 --annotations captions_val2017.json --image-dir val2017 --out kp.json
    python eval/kprecision.py --checkpoint runs/stage1 --out kp.json          # built-in scenes, test split

For each image the best caption among all captions of the set is retrieved by global similarity;
K-P is the share of its words found in the image's reference captions, K-Pna the same over its nouns
and adjectives (word lists, not a tagger: see spark_vlm/metrics/kprecision.py). Percent, averaged
over images. Unreadable images are skipped and counted (--strict stops instead).
The protocol: spark_vlm/evaluation/retrieval.py.
"""
import argparse

from spark_vlm.evaluation.data import CaptionData
from spark_vlm.evaluation.report import report_or_exit
from spark_vlm.evaluation.retrieval import kprecision_report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--annotations", help="COCO captions JSON (captions_val2017.json)")
    parser.add_argument("--karpathy", help="Karpathy split JSON (dataset_coco.json)")
    parser.add_argument("--split", default="test", help="Karpathy split (default: test)")
    parser.add_argument("--image-dir", help="folder of the images named in the annotations")
    parser.add_argument("--num-images", type=int, default=500, help="built-in scenes only: how many test scenes")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping")
    args = parser.parse_args(argv)
    source = CaptionData(args.annotations, args.karpathy, args.split, args.image_dir, args.num_images, args.strict)
    return report_or_exit(parser, lambda: kprecision_report(args.checkpoint, source, args.batch_size), args.out)


if __name__ == "__main__":
    main()
