"""Stage 2: a Flamingo-style captioner on the frozen stage-1 backbone.

    accelerate launch stage2_vlm/train.py                       # tiny config: runs/stage1 -> runs/stage2
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml stage2_vlm/train.py
    accelerate launch stage2_vlm/train.py lm.path=/models/opt-125m vision_checkpoint=runs/stage1_small
    accelerate launch stage2_vlm/train.py --resume latest
"""
import argparse
import sys

from spark_vlm.training.config import ConfigError, load_config
from spark_vlm.training.stage2 import MissingStage1Error, train_stage2
from spark_vlm.training.stage2_config import Stage2Config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: the built-in tiny config)")
    parser.add_argument("--resume", help="'latest' or a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=16 lm.path=DIR")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(Stage2Config, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        train_stage2(cfg, resume=args.resume)
    except MissingStage1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
