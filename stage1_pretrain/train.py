"""Stage 1: SPARK pretraining.

    accelerate launch stage1_pretrain/train.py                          # tiny config, built-in scenes
    accelerate launch stage1_pretrain/train.py --config configs/stage1_small.yaml loss=clip train.max_steps=500
    accelerate launch stage1_pretrain/train.py --resume latest          # continue runs/stage1/
"""
import argparse
import sys

from spark_vlm.training.config import ConfigError, load_config
from spark_vlm.training.stage1 import train_stage1
from spark_vlm.training.stage1_config import Stage1Config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: the built-in tiny config)")
    parser.add_argument("--resume", help="'latest' or a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64 loss=clip")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(Stage1Config, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    train_stage1(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
