"""MMVP-VLM (github.com/tsb0601/MMVP) with a stage-1 run, from local files.

    python eval/mmvp.py --checkpoint runs/stage1 --data-dir MMVP_VLM --out mmvp.json

--data-dir is the benchmark folder as distributed: Questions.csv (columns Question ID, Type, Statement) and
"MLLM_VLM Images/<Type>/<Question ID>.jpg". Consecutive rows form a pair; each text is "a photo of " +
statement; a pair is right only when each text prefers its own image strictly (a tie is wrong; the reference
gives ties to image 2). Pair accuracy per visual pattern and their average, beside chance (25). Unreadable
images are skipped and counted with their pair (--strict stops instead). The protocol: spark_vlm/evaluation/mmvp.py.
"""
import argparse

from spark_vlm.evaluation.mmvp import mmvp_report
from spark_vlm.evaluation.report import report_or_exit


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--data-dir", required=True, help="MMVP-VLM folder (Questions.csv, MLLM_VLM Images/)")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: mmvp_report(
        args.checkpoint, args.data_dir, args.batch_size, args.strict), args.out)


if __name__ == "__main__":
    main()
