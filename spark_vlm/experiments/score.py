"""One scoring step of the study, in its own process (so that `--workers 2` can pin it to a core like a trainer):

    python -m spark_vlm.experiments.score stage1 RUN_DIR --out RESULT.json --test-scenes 500
    python -m spark_vlm.experiments.score stage2 RUN_DIR --out RESULT.json --test-scenes 500 --annotations '{...}'

writes {"scores": ..., "seconds": ...} atomically to RESULT.json (stage1_scores / stage2_scores)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .plan import write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["stage1", "stage2"])
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--test-scenes", type=int, required=True)
    parser.add_argument("--annotations", help="stage 2: the test scenes' COCO export paths (export_coco's dict, JSON)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    if args.stage == "stage1":
        from .stage1_scores import stage1_scores

        scores = stage1_scores(args.run_dir, args.test_scenes)
    else:
        from .stage2_scores import stage2_scores

        scores = stage2_scores(args.run_dir, json.loads(args.annotations), args.test_scenes, args.test_scenes,
                               [0], args.seed)
    write_json(Path(args.out), {"scores": scores, "seconds": time.time() - start})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
