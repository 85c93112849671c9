"""Stage 1: SPARK pretraining.

    accelerate launch stage1_pretrain/train.py                          # tiny config, built-in scenes
    accelerate launch stage1_pretrain/train.py --config configs/stage1_small.yaml loss=clip train.max_steps=500
    accelerate launch stage1_pretrain/train.py --resume latest          # continue runs/stage1/
"""
import sys

from spark_vlm.training.cli import run_cli
from spark_vlm.training.stage1 import build_stage1
from spark_vlm.training.stage1_config import Stage1Config

if __name__ == "__main__":
    sys.exit(run_cli(Stage1Config, build_stage1, __doc__))
