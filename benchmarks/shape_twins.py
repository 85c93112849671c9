"""Do shape twins teach a contrastive backbone shape? SPARK stage 1 where every scene of a batch comes with its twin.

A twin is the same built-in scene (same seed, so the same background, colours, sizes and, where the shapes fit, the
same positions) rendered with its shapes renamed by a derangement of the 8 shapes: "two red circles and a blue star"
becomes e.g. "two red hearts and a blue square". A renamed shape that does not fit where the original did changes
the generator's later draws, so about 15% of twins (300 scenes measured, tests/test_shape_probe.py) also differ
in colours or sizes; the rest differ in shape alone. Only shape tells most scenes from their twins, so with both
in one batch the contrastive losses can no longer be won on colour, count and background alone; the question is whether they
then learn shape. `--mode plain` is the control: the same loop, steps and batch size on ordinary random batches.

    python benchmarks/shape_twins.py --architecture runs/stage1 --mode twins --stem conv --steps 2000 --out runs/twins
    python benchmarks/shape_twins.py --architecture runs/stage1 --mode plain --stem conv --steps 2000 --out runs/plain
    python eval/shape_probe.py --checkpoint runs/twins --out twins_probe.json     # then compare with the control

The loop is the paper's SPARK loss (`sparc_loss`), bf16 autocast where the trainer's `auto` would pick it, AdamW
(lr 1e-3, weight decay 0.1, betas 0.9/0.98), 100 warm-up steps then cosine, gradient clipping at 1.0; the
architecture and tokenizer come from a stage-1 run, its weights do not. `--out` is a stage-1 run directory
(`SparkModel.from_pretrained`, the tokenizer), so the shape probe and stage 2 read it as they read any run.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

import spark_vlm.data.scenes as scenes
from spark_vlm.data.images import to_pixel_values
from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.scene_vocab import SHAPES
from spark_vlm.data.tokenizer import CaptionTokenizer
from spark_vlm.losses import sparc_loss
from spark_vlm.models import SparkModel
from spark_vlm.training.optim import build_optimizer, cosine_schedule
from spark_vlm.training.throughput import resolve_precision

TWIN_ID_OFFSET = 10_000_000  # twins' sample ids, apart from the built-in train ids


@contextmanager
def renamed_shapes(order: tuple[str, ...]):
    """Render scenes with SHAPES replaced by `order`: each draw of shape i becomes shape order[i]. The scene
    generator reads the module-level tuple, so this swaps it for the duration of one render."""
    original = scenes.SHAPES
    scenes.SHAPES = order
    try:
        yield
    finally:
        scenes.SHAPES = original


def twin_scene(config: scenes.SceneConfig, index: int) -> dict:
    """Train scene `index` with its shapes renamed by a seeded derangement (no shape keeps its name)."""
    rng = np.random.default_rng([7, index])
    perm = rng.permutation(len(SHAPES))
    while (perm == np.arange(len(SHAPES))).any():
        perm = rng.permutation(len(SHAPES))
    with renamed_shapes(tuple(SHAPES[p] for p in perm)):
        return scenes.generate_scene(config, "train", index)


def training_data(mode: str, num_train: int, image_size: int):
    """(images, captions, ids) of the built-in train scenes; with twins, the first num_train // 2 scenes and
    their twins (twin of row i at row i + num_train // 2)."""
    base = scenes.cached_scenes("train", num_train, image_size)
    images, captions, ids = base.arrays()
    if mode == "plain":
        return images, captions, ids
    n = num_train // 2
    twins = [twin_scene(scenes.SceneConfig(image_size=image_size), i) for i in range(n)]
    images = np.concatenate([np.asarray(images[:n]), np.stack([t["image"] for t in twins])])
    return images, list(captions[:n]) + [list(t["captions"]) for t in twins], \
        list(ids[:n]) + [TWIN_ID_OFFSET + i for i in range(n)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", required=True, help="a stage-1 run directory: its config and tokenizer")
    parser.add_argument("--mode", choices=["twins", "plain"], default="twins")
    parser.add_argument("--stem", choices=["patch", "conv"], default="patch")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (twins: half are twins)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-train", type=int, default=30000, help="built-in train scenes (twins: half + twins)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="run directory to write (model, tokenizer, twins_log.json)")
    args = parser.parse_args(argv)
    if args.batch_size % 2 or args.batch_size < 2:
        parser.error(f"--batch-size must be even and >= 2, got {args.batch_size}")

    start = time.time()
    tokenizer = CaptionTokenizer.load(args.architecture)
    config = SparkModel.from_pretrained(args.architecture).config
    config.vision_stem = args.stem
    images, captions, ids = training_data(args.mode, args.num_train, config.image_size)
    print(f"data: {len(images)} images ({args.mode}) in {time.time() - start:.0f} s; e.g. {captions[0][0]!r}"
          + (f" / its twin {captions[len(images) // 2][0]!r}" if args.mode == "twins" else ""), flush=True)
    data = CaptionedImages(images, captions, ids, tokenizer=tokenizer, max_len=config.max_text_len, seed=args.seed)

    torch.manual_seed(args.seed)
    model = SparkModel(config).train()
    opt = build_optimizer(model, lr=args.lr, weight_decay=0.1, betas=(0.9, 0.98))
    schedule = cosine_schedule(opt, 100, args.steps)
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"
    rng = np.random.default_rng(args.seed)
    half = len(images) // 2
    log, start = [], time.time()
    for step in range(args.steps):
        if args.mode == "twins":  # batch_size / 2 scenes and their twins
            rows = rng.choice(half, args.batch_size // 2, replace=False)
            rows = np.concatenate([rows, rows + half])
        else:
            rows = rng.choice(len(images), args.batch_size, replace=False)
        items = [data[int(i)] for i in rows]
        pixels = to_pixel_values(torch.stack([it["images"] for it in items]))
        input_ids = torch.stack([it["input_ids"] for it in items])
        mask = torch.stack([it["attention_mask"] for it in items])
        with torch.autocast("cpu", torch.bfloat16) if bf16 else nullcontext():
            out = model(pixels, input_ids, mask)
            losses = sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds,
                                out.token_mask, out.logit_scale)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), schedule.step(), opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            log.append({"step": step, **{k: round(v.item(), 4) for k, v in losses.items()}})
            print(f"step {step} " + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                  + f" ({time.time() - start:.0f} s)", flush=True)
    model.save_pretrained(args.out)
    tokenizer.save(args.out)
    result = {"mode": args.mode, "stem": args.stem, "steps": args.steps, "batch_size": args.batch_size,
              "bf16": bf16, "train_seconds": round(time.time() - start, 1), "log": log}
    with open(f"{args.out}/twins_log.json", "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
