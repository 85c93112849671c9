"""SugarCrepe (github.com/RAIVNLab/sugar-crepe) with a stage-1 run, from local files.

    python eval/sugarcrepe.py --checkpoint runs/stage1 --data-dir sugar-crepe/data --image-dir coco/val2017 \
        --out sugarcrepe.json

--data-dir holds the benchmark's per-type JSON files (add_obj.json ... swap_att.json; the ones present are
scored), each {id: {filename, caption, negative_caption}}; --image-dir holds the COCO val2017 images. An item
is passed when the image's cosine with the caption is strictly above that with the negative (a tie is wrong).
Per type: accuracy beside chance (50), the same model with a blank image (a text-only control) and "the
shorter caption wins". Unreadable images are skipped and counted (--strict stops instead).
The protocol: spark_vlm/evaluation/sugarcrepe.py.
"""
import argparse

from spark_vlm.evaluation.report import report_or_exit
from spark_vlm.evaluation.sugarcrepe import sugarcrepe_report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--data-dir", required=True, help="folder of the SugarCrepe type files (<type>.json)")
    parser.add_argument("--image-dir", required=True, help="folder of the COCO val2017 images")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: sugarcrepe_report(
        args.checkpoint, args.data_dir, args.image_dir, args.batch_size, args.strict), args.out)


if __name__ == "__main__":
    main()
