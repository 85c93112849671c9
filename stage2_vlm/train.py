"""Stage 2: a Flamingo-style captioner on the frozen stage-1 backbone.

    accelerate launch stage2_vlm/train.py                       # tiny config: runs/stage1 -> runs/stage2
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml stage2_vlm/train.py
    accelerate launch stage2_vlm/train.py lm.path=/models/opt-125m vision_checkpoint=runs/stage1_small
    accelerate launch stage2_vlm/train.py --resume latest
"""
import sys

from spark_vlm.training.cli import run_cli
from spark_vlm.training.stage2 import build_stage2
from spark_vlm.training.stage2_config import Stage2Config

if __name__ == "__main__":
    sys.exit(run_cli(Stage2Config, build_stage2, __doc__))
