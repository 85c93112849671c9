"""Score generated captions with the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).

    python eval/captioning.py --results results.json --annotations captions.json \
        --out scores.json [--split val]

results.json is a COCO results file, ``[{"image_id": 1, "caption": "..."}]``; captions.json is a
COCO-format captions file (``{"images": [...], "annotations": [{"image_id", "caption"}]}``).
Scores are x100. The protocol: spark_vlm/evaluation/captioning.py; the metrics: spark_vlm/metrics/caption_metrics.py.
"""
import argparse

from spark_vlm.evaluation.captioning import caption_metrics_report
from spark_vlm.evaluation.report import report_or_exit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="COCO results JSON (image_id, caption)")
    parser.add_argument("--annotations", required=True, help="COCO-format captions JSON")
    parser.add_argument("--out", required=True, help="where to write the scores JSON (a .md table goes next to it)")
    parser.add_argument("--split", default=None, help="split name recorded in the output")
    parser.add_argument("--blind-seed", type=int, default=None,
                        help="also score the blind baseline (each image given another image's reference caption, "
                             "drawn with this seed) and print it beside the model")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: caption_metrics_report(
        args.results, args.annotations, args.split, args.blind_seed), args.out)


if __name__ == "__main__":
    main()
