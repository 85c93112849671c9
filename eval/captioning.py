"""Score generated captions with the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).

    python eval/captioning.py --results results.json --annotations captions.json \
        --out scores.json [--split val]

results.json is a COCO results file, ``[{"image_id": 1, "caption": "..."}]``; captions.json is a
COCO-format captions file (``{"images": [...], "annotations": [{"image_id", "caption"}]}``).
Scores are x100. The logic lives in spark_vlm.metrics.caption_metrics.
"""

import argparse
import json
import os
import sys

from spark_vlm.metrics.caption_metrics import format_table, references_from_coco, score_captions


def load_json(path: str, what: str):
    """Read a JSON file, turning a missing or malformed file into a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        sys.exit(f"error: cannot read {what} file {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        sys.exit(f"error: {what} file {path} is not valid JSON: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="COCO results JSON (image_id, caption)")
    parser.add_argument("--annotations", required=True, help="COCO-format captions JSON")
    parser.add_argument("--out", required=True, help="where to write the scores JSON")
    parser.add_argument("--split", default=None, help="split name recorded in the output")
    args = parser.parse_args()

    results = load_json(args.results, "results")
    annotations = load_json(args.annotations, "annotations")
    try:
        scores = score_captions(results, references_from_coco(annotations))
    except ValueError as e:
        sys.exit(f"error: {e}")
    output = {"split": args.split, "num_images": scores["num_images"],
              "overall": scores["overall"], "per_image": scores["per_image"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(output, f, indent=2)
    title = f"{args.split or 'captions'}: {scores['num_images']} images"
    print(format_table(scores["overall"], title=title))


if __name__ == "__main__":
    main()
