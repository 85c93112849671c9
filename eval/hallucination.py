"""Measure object hallucination in generated captions with CHAIR (CHAIRs / CHAIRi, in %).

    python eval/hallucination.py --results results.json --captions captions.json \
        [--instances instances.json] [--synonyms synonyms.json] [--reference-exact] --out chair.json

Ground-truth objects per image are the instance annotations (if given) plus every object named
in the image's reference captions. The vocabulary is COCO's 80 categories with the reference
CHAIR synonyms, unless --synonyms gives a JSON ``{category: [synonyms]}`` (e.g. the synthetic
scenes' annotations/synonyms.json). --reference-exact reproduces the reference implementation's
numbers (pattern.en's singulariser: "bus" -> "bu", "ties" -> "ty", ...; see the metric's docstring);
the default fixes those bugs. The protocol: spark_vlm/evaluation/captioning.py; the metric:
spark_vlm/metrics/chair.py.
"""
import argparse

from spark_vlm.evaluation.captioning import chair_report
from spark_vlm.evaluation.report import report_or_exit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="COCO results JSON (image_id, caption)")
    parser.add_argument("--captions", required=True, help="COCO-format reference captions JSON")
    parser.add_argument("--instances", default=None, help="COCO instances JSON (optional)")
    parser.add_argument("--synonyms", default=None, help="JSON {category: [synonyms]} vocabulary")
    parser.add_argument("--reference-exact", action="store_true",
                        help="reproduce LisaAnne/Hallucination's numbers, its singulariser's bugs included")
    parser.add_argument("--blind-seed", type=int, default=None,
                        help="also score the blind baseline (each image given another image's reference caption, "
                             "drawn with this seed) and print it beside the model")
    parser.add_argument("--out", required=True, help="where to write the CHAIR JSON (a .md table goes next to it)")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: chair_report(
        args.results, args.captions, args.instances, args.synonyms, args.reference_exact, args.blind_seed),
        args.out)


if __name__ == "__main__":
    main()
