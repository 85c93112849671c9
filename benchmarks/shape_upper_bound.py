"""Can the stage-1 ViT learn shapes at all in a stage-1 budget? The backbone's upper bound for the shape probe.

Trains the vision tower of a stage-1 run's architecture (random init) *supervised* on shape presence (multi-label
binary cross-entropy of a linear head on the mean patch feature; the 8 shape classes of each built-in train scene),
for the same steps and batch as a stage-1 run, then scores it with the shape probe (eval/shape_probe.py's protocol,
spark_vlm/evaluation/shape_probe.py). If even direct supervision leaves the probe near a random-init encoder, the
budget or the architecture is the bottleneck, not the contrastive objective.

    python benchmarks/shape_upper_bound.py --architecture runs/stage1 --stem patch --out shape_bound_patch.json
    python benchmarks/shape_upper_bound.py --architecture runs/stage1 --stem conv --out shape_bound_conv.json
    python benchmarks/shape_upper_bound.py --architecture runs/stage1 --stem conv --steps 2000 --lr 1e-3 \
        --out bound.json --save runs/stage1_supervised     # a backbone that sees shape, for stage 2

`--stem conv` builds the tower with `vision_stem=conv` (the model option: 3x3 stride-2 convolutions with group norm
and ReLU, then a 1x1 convolution to the width, in place of the 8x8 patchify; "Early convolutions help transformers
see better", Xiao et al. 2021), same token grid; `--stem patch` with the patchify stem, whatever the run used.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from spark_vlm.data.images import to_pixel_values
from spark_vlm.data.scene_vocab import SHAPES
from spark_vlm.data.scenes import cached_scenes
from spark_vlm.evaluation.data import builtin_scenes, scene_images
from spark_vlm.evaluation.shape_probe import patch_features, probe_scores
from spark_vlm.evaluation.stage1_run import device
from spark_vlm.models import SparkModel


def train_supervised(model: SparkModel, images: torch.Tensor, present: torch.Tensor, steps: int, batch_size: int,
                     lr: float, seed: int) -> list[float]:
    """AdamW on the vision tower + a linear head, warm-up then cosine; returns the loss every 50 steps."""
    head = nn.Linear(model.config.vision_width, len(SHAPES))
    params = [*model.vision_model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    warmup = max(1, min(100, steps // 4))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        feats = model.image_features(to_pixel_values(images[idx]))
        loss = nn.functional.binary_cross_entropy_with_logits(head(feats.mean(1)), present[idx])
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    return losses


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", required=True, help="a stage-1 run directory: its config (not weights)")
    parser.add_argument("--stem", choices=["patch", "conv"], default="patch")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--num-train", type=int, default=30000, help="built-in train scenes to draw batches from")
    parser.add_argument("--probe-train", type=int, default=3000, help="train scenes the probes fit")
    parser.add_argument("--probe-test", type=int, default=500, help="test scenes the probes are scored on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON to write")
    parser.add_argument("--save", help="also save the trained model here as a stage-1 run directory (its text tower "
                        "untrained), e.g. as stage 2's vision_checkpoint=")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    config = SparkModel.from_pretrained(args.architecture).config
    config.vision_stem = args.stem
    model = SparkModel(config)
    scenes = cached_scenes("train", args.num_train, config.image_size)
    images = torch.from_numpy(np.array(scenes.arrays()[0]))
    present = torch.zeros(len(scenes), len(SHAPES))
    for i in range(len(scenes)):
        for o in scenes.meta(i)["objects"]:
            present[i, SHAPES.index(o["shape"])] = 1
    start = time.time()
    losses = train_supervised(model, images, present, args.steps, args.batch_size, args.lr, args.seed)
    model.eval().to(device())  # patch_features puts the pixels on the evaluation device
    train, test = (builtin_scenes("train", args.probe_train, config.image_size),
                   builtin_scenes("test", args.probe_test, config.image_size))

    def features(sc):
        return patch_features(model, scene_images(sc, config.image_size), batch_size=250)

    result = {"architecture": args.architecture, "stem": args.stem, "steps": args.steps,
              "batch_size": args.batch_size, "train_seconds": round(time.time() - start, 1), "losses_every_50": losses,
              "probe": probe_scores(features(train), train, features(test), test, config.patch_size)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    if args.save:
        model.save_pretrained(args.save)
        shutil.copy(Path(args.architecture, "tokenizer.model"), args.save)
    print(json.dumps(result["probe"]))
    return result


if __name__ == "__main__":
    main()
