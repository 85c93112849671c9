"""Measure object hallucination in generated captions with CHAIR (CHAIRs / CHAIRi, in %).

    python eval/hallucination.py --results results.json --captions captions.json \
        [--instances instances.json] [--synonyms synonyms.json] --out chair.json

Ground-truth objects per image are the instance annotations (if given) plus every object named
in the image's reference captions. The vocabulary is COCO's 80 categories with the reference
CHAIR synonyms, unless --synonyms gives a JSON ``{category: [synonyms]}`` (e.g. the synthetic
scenes' annotations/synonyms.json). The logic lives in spark_vlm.metrics.chair.
"""

import argparse
import json
import os
import sys

from spark_vlm.metrics.chair import ChairVocabulary, compute_chair, format_table, gt_objects_from_coco


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
    parser.add_argument("--captions", required=True, help="COCO-format reference captions JSON")
    parser.add_argument("--instances", default=None, help="COCO instances JSON (optional)")
    parser.add_argument("--synonyms", default=None, help="JSON {category: [synonyms]} vocabulary")
    parser.add_argument("--out", required=True, help="where to write the CHAIR JSON")
    args = parser.parse_args()

    results = load_json(args.results, "results")
    captions = load_json(args.captions, "captions")
    instances = load_json(args.instances, "instances") if args.instances else None
    try:
        if args.synonyms:
            synonyms = load_json(args.synonyms, "synonyms")
            if not isinstance(synonyms, dict):
                raise ValueError(f"synonyms file {args.synonyms} must hold a JSON object {{category: [synonyms]}}")
            vocab = ChairVocabulary.from_synonyms(synonyms)
        else:
            vocab = ChairVocabulary.coco()
        gt_objects = gt_objects_from_coco(instances, captions, vocab)
        scores = compute_chair(results, gt_objects, vocab)
    except ValueError as e:
        sys.exit(f"error: {e}")
    scores["vocabulary"] = args.synonyms or "coco"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=2)
    print(format_table(scores))


if __name__ == "__main__":
    main()
