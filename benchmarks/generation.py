"""Caption generation speed with and without the caches, and stage-2 training throughput.

    python benchmarks/generation.py                          # a tiny random captioner (no run needed)
    python benchmarks/generation.py --checkpoint runs/stage2 # the trained one

Generation: batch 16, exactly 20 new tokens (stopping disabled so every variant does the same work), greedy.
  uncached       every step re-runs the whole sequence through the LM and recomputes the visual latents
                 and their cross-attention keys/values
  lm_cache       the LM key/value cache, visual part recomputed every step
  full_cache     LM cache + visual latents and cross-attention K/V computed once per call
Training: samples/s of forward + backward + AdamW on the trainable parts, batch 16.
Writes JSON (--out) and prints a markdown table. Medians over --repeats runs after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

VARIANTS = {"uncached": dict(use_cache=False, cache_visual=False),
            "lm_cache": dict(use_cache=True, cache_visual=False),
            "full_cache": dict(use_cache=True, cache_visual=True)}


def tiny_captioner():
    """A random tiny captioner with the default stage-2 sizes on a stand-in-sized GPT-2 (untrained)."""
    from spark_vlm.data.prompts import FlamingoPrompts
    from spark_vlm.models import SparkConfig, SparkModel
    from spark_vlm.models.flamingo import FlamingoConfig, SparkFlamingo
    from spark_vlm.training.standin_lm import build_lm, train_bpe_tokenizer

    torch.manual_seed(0)
    vision = SparkModel(SparkConfig.from_preset("tiny", vocab_size=600))
    words = "a the two three red blue green small large circle square star ring left right of above below".split()
    tok = train_bpe_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10, 300)
    lm = build_lm("gpt2", len(tok), 128, 4, 4, 64, tok.pad_token_id, tok.eos_token_id)
    config = FlamingoConfig(vision_width=vision.config.vision_width, num_latents=64, resampler_depth=2,
                            resampler_heads=4, resampler_dim_head=32, xattn_heads=4, xattn_dim_head=32, ff_mult=2.0)
    model = SparkFlamingo(config, vision, lm, tok)
    with torch.no_grad():  # non-zero gates, as after training, so the visual path does real work
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.5)
    return model.eval(), FlamingoPrompts(model.tokenizer)


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a stage-2 run directory (default: a random tiny captioner)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()

    if args.checkpoint:
        from spark_vlm.evaluation.captioner import load_captioner

        model, prompts = load_captioner(args.checkpoint)
    else:
        model, prompts = tiny_captioner()
    size = model.vision.config.image_size
    images = torch.randint(0, 256, (args.batch_size, size, size, 3), dtype=torch.uint8)
    from spark_vlm.data.images import to_pixel_values

    px = to_pixel_values(images)[:, None]
    prompt = prompts.generation_prompts(args.batch_size)
    results = []
    for name, flags in VARIANTS.items():
        def generate():
            out = model.generate(px, prompt["input_ids"], prompt["attention_mask"], max_new_tokens=args.new_tokens,
                                 eos_token_id=[], **flags)
            assert out.shape[1] == args.new_tokens, out.shape
        seconds = time_it(generate, args.repeats)
        tokens = args.batch_size * args.new_tokens
        results.append({"variant": name, **flags, "batch_size": args.batch_size, "new_tokens": args.new_tokens,
                        "seconds": seconds, "tokens_per_s": tokens / seconds})
        print(f"  {name:10s}: {tokens / seconds:8.1f} tokens/s", flush=True)

    # Training throughput of the trainable parts (the frozen parts run forward, and backward for activations).
    enc = prompts(["two red circles left of a blue square"] * args.batch_size, 24)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    model.train()

    def train_step():
        loss = model(px, enc["input_ids"], enc["attention_mask"], labels=enc["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time_it(train_step, args.repeats)
    training = {"batch_size": args.batch_size, "seq_len": 24, "samples_per_s": args.batch_size / train_s}
    print(f"  training  : {training['samples_per_s']:8.1f} samples/s")

    base = next(r for r in results if r["variant"] == "uncached")["tokens_per_s"]
    print("\n| variant | LM cache | visual K/V cache | tokens/s | vs uncached |\n|---|---|---|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['use_cache']} | {r['cache_visual']} | {r['tokens_per_s']:.0f} | "
              f"{r['tokens_per_s'] / base:.2f}x |")
    print(f"\ntraining: {training['samples_per_s']:.1f} samples/s (batch {args.batch_size})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": args.checkpoint or "random tiny captioner", "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "generation": results, "training": training}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
