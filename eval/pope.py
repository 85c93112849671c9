"""POPE object probing of a stage-2 captioner (random / popular / adversarial negatives).

    python eval/pope.py --checkpoint runs/stage2 --instances data/scenes/annotations/instances_test.json \
        --image-dir data/scenes/test --out pope.json [--settings random popular adversarial] [--shots 2]
    python eval/pope.py --checkpoint runs/stage2 --questions coco_pope_random.json coco_pope_popular.json \
        coco_pope_adversarial.json --image-dir val2014 --out pope.json        # POPE's own question files

With --instances the questions are sampled as the reference does (500 images with >= 3 objects, the same 3
positives in every setting, one negative per positive); with --questions they are read from POPE's jsonl files
(one setting per file). --answer likelihood (default) takes the likelier of " yes" / " no"; --answer generate reads
a greedy answer with POPE's rule; --answer statement --statements scenes does not ask at all: it compares how
likely the image makes a caption about the object with the images' average (PMI > 0; not POPE's prompt).
Reports accuracy, precision, recall, F1 and the yes-ratio per setting (percent), written as JSON, with a markdown
table printed. The protocol: spark_vlm/evaluation/pope.py (and pope_statements.py); question sampling and scores:
spark_vlm/metrics/pope.py.
"""
import argparse

from spark_vlm.evaluation.captioner import DEVICES
from spark_vlm.evaluation.pope import ANSWER_MODES, pope_report
from spark_vlm.evaluation.report import report_or_exit
from spark_vlm.metrics.pope import SETTINGS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--instances", help="COCO instances JSON (the ground-truth objects)")
    source.add_argument("--questions", nargs="+", help="POPE question files (jsonl with image/text/label)")
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--num-images", type=int, default=500, help="images drawn from those with >= 3 objects")
    parser.add_argument("--shots", type=int, default=2, help="few-shot examples before each question")
    parser.add_argument("--answer", choices=ANSWER_MODES, default="likelihood",
                        help="statement: not POPE's prompt, see spark_vlm/evaluation/pope_statements.py")
    parser.add_argument("--statements", nargs="+", default=["plain"],
                        help="--answer statement: presets (plain: 'a {object}'; scenes: 'a red {object}', ...) "
                             "and/or your own templates with {object}, e.g. 'a photo of a {object}'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda if available, else cpu")
    parser.add_argument("--vision-checkpoint", help="where the run's stage-1 directory is now (hash-checked)")
    parser.add_argument("--lm-path", help="where the run's frozen LM is now (hash-checked)")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: pope_report(
        args.checkpoint, args.image_dir, args.instances, args.questions or (), args.settings, args.num_images,
        args.shots, args.seed, args.batch_size, args.answer, args.device, args.vision_checkpoint, args.lm_path,
        args.statements),
        args.out)


if __name__ == "__main__":
    main()
