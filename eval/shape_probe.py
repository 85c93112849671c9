"""Shape probe: can a linear read-out name an object's shape (and, as the control, its colour) from a frozen
stage-1 encoder's patch features, the features stage 2 reads? Beside a random-init encoder, raw pixels and chance.

    python eval/shape_probe.py --checkpoint runs/stage1 --out shape_probe.json          # built-in scenes

The protocol: spark_vlm/evaluation/shape_probe.py.
"""
import argparse

from spark_vlm.evaluation.report import report_or_exit
from spark_vlm.evaluation.shape_probe import shape_probe_report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--num-train", type=int, default=3000, help="built-in train scenes the probes fit (3000)")
    parser.add_argument("--num-test", type=int, default=500, help="built-in test scenes they are scored on (500)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    return report_or_exit(parser, lambda: shape_probe_report(args.checkpoint, args.num_train, args.num_test,
                                                             args.batch_size), args.out)


if __name__ == "__main__":
    main()
