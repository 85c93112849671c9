"""Cost of a full stage-1 training step (forward + backward + AdamW) with the clip, filip and sparc losses.

    python benchmarks/loss_cost.py                                  # tiny model, batch 32..512
    python benchmarks/loss_cost.py --preset small --batch-sizes 32 64 128 --out benchmarks/results/small.json
    python benchmarks/loss_cost.py --batch-sizes 32 --losses clip sparc sparc+centre sparc+cross4 sparc+content
    python benchmarks/loss_cost.py --batch-sizes 64 256 --losses clip sparc sparc+centre+max+cross16+content \
        --out benchmarks/results/loss_cost_max_variant.json
    python benchmarks/loss_cost.py --batch-sizes 64 --losses clip sparc sparc+shapeneg \
        sparc+centre+max+cross16+content+shapeneg --out benchmarks/results/loss_cost_shapeneg.json

    python benchmarks/loss_cost.py --paired 15 --batch-sizes 64 256 --losses clip sparc --precision bf16 \
        --out benchmarks/results/loss_overhead_bf16.json     # SPARK's step vs CLIP's, paired (no memory)

Each (loss, batch size) runs in a fresh subprocess so that its peak memory is its own: on CUDA the
allocator's max_memory_allocated, on CPU the process's peak RSS during the timed steps minus its RSS before
them (model, optimizer state and inputs excluded; activations, gradients, temporaries included). Times are medians over repeated steps after warm-up.
Writes {"results": [{"loss", "batch_size", "step_ms", "peak_mem_mb", ...}, ...]} and prints a table with
SPARC and FILIP relative to CLIP (the paper's Table 11 reports SPARC +0.55% FLOPs / +0.49% memory over
CLIP, FILIP ~3x FLOPs and 1.8x memory, at batch 16384 on TPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOSSES = ("clip", "filip", "sparc")
# SPARK with each fine-grained option of the stage-1 config (losses.sparc_loss keywords). "content" drops a third
# of the tokens from the fine loss, about the function words' share of the scenes' captions.
SPARC_VARIANTS = {"sparc+centre": {"centre_positions": True}, "sparc+cross4": {"cross_images": 4},
                  "sparc+content": {"content_only": True},
                  "sparc+centre+max+cross16+content": {"centre_positions": True, "weights": "max", "cross_images": 16,
                                                       "content_only": True}}
# hard_negatives=shape_swap: one negative caption per image through the text tower too (two thirds of the scenes'
# captions name a shape and get one), as extra columns of the global loss.
SPARC_VARIANTS["sparc+shapeneg"] = {"negatives": True}
SPARC_VARIANTS["sparc+centre+max+cross16+content+shapeneg"] = {
    **SPARC_VARIANTS["sparc+centre+max+cross16+content"], "negatives": True}
CHOICES = LOSSES + tuple(SPARC_VARIANTS)


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def build(preset: str, batch_size: int):
    """A tiny (or `preset`) SparkModel, its AdamW and one fixed batch, on CUDA if there is one."""
    import torch

    from spark_vlm.models import SparkConfig, SparkModel

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SparkModel(SparkConfig.from_preset(preset, vocab_size=1000)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    c = model.config
    px = torch.randn(batch_size, 3, c.image_size, c.image_size, device=device)
    ids = torch.randint(1, 1000, (batch_size, c.max_text_len), device=device)
    lengths = torch.randint(c.max_text_len // 3, c.max_text_len + 1, (batch_size,), device=device)
    mask = torch.arange(c.max_text_len, device=device)[None] < lengths[:, None]
    return model, opt, (px, ids, mask), device


def make_step(model, opt, batch, loss: str, precision: str, device):
    """One training step (forward, `loss`, backward, AdamW) on `batch`, as a callable."""
    import torch

    from spark_vlm.losses import clip_loss, filip_loss, sparc_loss

    px, ids, mask = batch
    batch_size = len(px)
    options = dict(SPARC_VARIANTS.get(loss, {}))
    negatives = options.pop("negatives", False)
    neg_ids = torch.randint(1, 1000, ids.shape, device=device)
    has_negative = torch.arange(batch_size, device=device) % 3 != 0

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if negatives:  # as training/stage1.py: the negatives ride in the same forward as extra text rows
                out = model(px, torch.cat([ids, neg_ids]), torch.cat([mask, mask]))
                extra = {"negative_text_embeds": out.text_embeds[batch_size:], "has_negative": has_negative}
                out.text_embeds, out.token_embeds = out.text_embeds[:batch_size], out.token_embeds[:batch_size]
                out.token_mask = out.token_mask[:batch_size]
            else:
                out, extra = model(px, ids, mask), {}
            if loss == "clip":
                value = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
            elif loss == "filip":
                value = filip_loss(out.patch_embeds, out.token_embeds, out.token_mask, out.logit_scale)
            else:
                fine = {k: v for k, v in options.items() if k != "content_only"}
                if options.get("content_only"):
                    fine["fine_mask"] = out.token_mask & (ids % 3 != 0)
                value = sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds,
                                   out.token_mask, out.logit_scale, **fine, **extra)["loss"]
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def one_config(preset: str, loss: str, batch_size: int, steps: int, precision: str) -> dict:
    """Runs inside the subprocess: build the model, time `steps` training steps, measure peak memory."""
    import torch

    model, opt, batch, device = build(preset, batch_size)
    step = make_step(model, opt, batch, loss, precision, device)
    step()  # warm-up; also allocates the optimizer state, which belongs to every loss alike
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = proc_status_kib("VmRSS")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (proc_status_kib("VmHWM") - base) / 1024
    return {"loss": loss, "batch_size": batch_size, "preset": preset, "precision": precision,
            "step_ms": statistics.median(times), "step_ms_all": times, "peak_mem_mb": peak_mb,
            "device": str(device)}


def paired(preset: str, losses: list[str], batch_size: int, rounds: int, precision: str) -> dict:
    """Step time of each loss relative to CLIP's, timed in one process on one model, the losses alternating
    step for step (the order rotating every round), so that machine drift between configurations cancels:
    the median over rounds of (loss step / CLIP step in the same round). No memory here."""
    model, opt, batch, device = build(preset, batch_size)
    names = ["clip", *[n for n in losses if n != "clip"]]
    steps = {n: make_step(model, opt, batch, n, precision, device) for n in names}
    for fn in steps.values():
        fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append((time.perf_counter() - t0) * 1000)
    return {"batch_size": batch_size, "precision": precision, "rounds": rounds,
            "step_ms": {n: statistics.median(t) for n, t in times.items()},
            "vs_clip": {n: statistics.median(a / c for a, c in zip(times[n], times["clip"])) for n in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=CHOICES,
                        help=f"default: {' '.join(LOSSES)}; SPARK's fine-loss options: {' '.join(SPARC_VARIANTS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config (after one warm-up)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--paired", type=int, metavar="ROUNDS",
                        help="instead: step time vs CLIP's in one process, losses alternating for ROUNDS rounds")
    parser.add_argument("--out", default="benchmarks/results/loss_cost.json")
    parser.add_argument("--_worker", nargs=2, metavar=("LOSS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._worker:  # inside the subprocess
        loss, batch = args._worker
        print(json.dumps(one_config(args.preset, loss, int(batch), args.steps, args.precision)))
        return

    if args.paired:
        rows = [paired(args.preset, args.losses, b, args.paired, args.precision) for b in args.batch_sizes]
        print("| batch | precision | " + " | ".join(f"{n} ms (vs clip)" for n in rows[0]["step_ms"]) + " |")
        print("|---:|---|" + "---:|" * len(rows[0]["step_ms"]))
        for r in rows:
            print(f"| {r['batch_size']} | {r['precision']} | " + " | ".join(
                f"{ms:.1f} ({r['vs_clip'][n]:.3f}x)" for n, ms in r["step_ms"].items()) + " |")
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "paired": rows}, indent=2))
        return

    results = []
    for batch in args.batch_sizes:
        for loss in args.losses:
            cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps),
                   "--precision", args.precision, "--_worker", loss, str(batch)]
            # A fixed mmap threshold makes glibc return every large freed tensor to the OS at once, so the
            # process's RSS follows live memory and its peak is the step's real peak.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{loss} @ {batch}: failed ({proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
                results.append({"loss": loss, "batch_size": batch, "error": proc.stderr[-500:]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(row)
            print(f"  {loss:13s} batch {batch:4d}: {row['step_ms']:9.1f} ms/step  {row['peak_mem_mb']:8.1f} MB",
                  flush=True)

    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"preset": args.preset, "precision": args.precision, "steps": args.steps,
            "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


def print_table(results: list[dict]) -> None:
    by = {(r["loss"], r["batch_size"]): r for r in results if "error" not in r}
    print("\n| batch | loss | step ms | peak MB | step vs CLIP | memory vs CLIP |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in sorted({b for _, b in by}):
        clip = by.get(("clip", batch))
        for loss in CHOICES:
            r = by.get((loss, batch))
            if r is None:
                continue
            rel_t = f"{r['step_ms'] / clip['step_ms']:.2f}x" if clip else "-"
            rel_m = f"{r['peak_mem_mb'] / clip['peak_mem_mb']:.2f}x" if clip and clip["peak_mem_mb"] > 0 else "-"
            print(f"| {batch} | {loss} | {r['step_ms']:.1f} | {r['peak_mem_mb']:.0f} | {rel_t} | {rel_m} |")


if __name__ == "__main__":
    main()
