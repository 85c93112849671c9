"""POPE-style object probing of a stage-2 captioner (random / popular / adversarial negatives).

    python eval/pope.py --checkpoint runs/stage2 --instances data/scenes/annotations/instances_test.json \
        --image-dir data/scenes/test --out pope.json [--settings random popular adversarial] [--shots 2]

Ground truth = the instance annotations' categories. Reports accuracy, precision, recall, F1 and the
yes-ratio per setting (percent), written as JSON, with a markdown table printed.
"""
import argparse
import json
import sys
from pathlib import Path

from spark_vlm.captioner import load_captioner
from spark_vlm.data.images import SkipCounter
from spark_vlm.data.readers import load_pairs, read_coco_instances
from spark_vlm.metrics.pope import SETTINGS, pope_scores, sample_pope_questions
from spark_vlm.pope_probe import answer_pope, choose_shots


def main() -> None:
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
    args = parser.parse_args()

    try:
        instances = json.loads(Path(args.instances).read_text())
        per_image, categories = read_coco_instances(args.instances)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        sys.exit(f"error: cannot read instances file {args.instances}: {e}")
    names = sorted(c["name"] for c in categories)
    gt = {im["id"]: {a["category"] for a in per_image.get(im["id"], [])} for im in instances["images"]}
    model, prompts = load_captioner(args.checkpoint)
    records = [{"image_id": im["id"], "path": str(Path(args.image_dir) / im["file_name"]), "captions": ["-"]}
               for im in instances["images"]]
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, counter=counter)
    by_id = dict(zip(ids, images))
    gt = {i: gt[i] for i in ids}

    report = {"num_images_asked": None, "shots": args.shots, "settings": {}}
    for setting in args.settings:
        questions = sample_pope_questions(gt, names, setting, seed=args.seed)
        asked = sorted({q["image_id"] for q in questions})[: args.num_images]
        questions = [q for q in questions if q["image_id"] in set(asked)]
        shots = choose_shots(questions, gt, names, args.shots, args.seed)
        answers = answer_pope(model, prompts.tokenizer, questions, shots, by_id, args.batch_size)
        report["settings"][setting] = pope_scores(questions, answers)
        report["num_images_asked"] = len(asked)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    keys = list(next(iter(report["settings"].values())))
    print("| setting | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for setting, scores in report["settings"].items():
        print(f"| {setting} | " + " | ".join(f"{scores[k]:.1f}" if isinstance(scores[k], float) else str(scores[k])
                                             for k in keys) + " |")
    if counter.total:
        print(counter.summary())


if __name__ == "__main__":
    main()
