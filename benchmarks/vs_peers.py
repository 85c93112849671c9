"""spark-vlm against its peers, side by side in one process: stage 1 vs open_clip, stage 2 and generation vs
open_flamingo. Same architectures, random weights, same inputs; parameter counts are checked before timing.

The peers live in a separate environment (never the project's .venv, which stays on the CPU torch wheel):

    python benchmarks/vs_peers.py --make-venv /work/bench-venv     # once: creates and fills it, then exits
    taskset -c 0 /work/bench-venv/bin/python benchmarks/vs_peers.py  # JSON + markdown under benchmarks/results/

Cases (samples/s or tokens/s; each row is `--rounds` rounds, the two sides alternating and swapping who goes first
every round; the table gives the median and the min-max spread over rounds):
  stage1 sparc|clip fp32|bf16  forward, loss, backward, AdamW of the tiny dual encoder, batch 64 (--compile: both
                               sides torch.compile'd)
  stage2 fp32|bf16             the same for the trainable parts of the captioner, batch 16 x 32 tokens
  generate                     greedy, batch 16, exactly 20 new tokens, both with their caches; the LM alone too,
                               and the ceiling for ours: the LM alone plus our per-call visual prefix (vision
                               tower, resampler, cross-attention K/V), as if our tokens cost what the LM's do
MFU is against the measured matmul peak (training/throughput.py), with our own FLOP counts for both sides.

The last column counts minor page faults per call. glibc hands freed memory above its trim threshold back to the
kernel, so a step's large activations are faulted in (and zeroed) again at every step, on both sides. The control
for how much of a ratio is that allocator behaviour, rather than either side's code, is the same run with glibc told
to keep its memory (it reads these at start-up):
    MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TOP_PAD_=67108864 taskset -c 0 ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

# torch 2.14.1 + torchvision 0.29.1 are the pair on this machine's disk (PyPI's torchvision does not import beside
# the project's CPU torch 2.13.0); open-flamingo's own pins are years old, so it goes in with --no-deps.
VENV_STEPS = [["torch==2.14.1", "torchvision==0.29.1"],
              ["open_clip_torch", "einops", "einops-exts", "transformers>=5.0", "safetensors", "sentencepiece",
               "numpy", "pillow", "omegaconf", "pyyaml", "tqdm", "protobuf", "tokenizers"],
              ["--no-deps", "open-flamingo"]]


def make_venv(path: str) -> None:
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    for step in VENV_STEPS:
        subprocess.run([f"{path}/bin/pip", "install", "-q", *step], check=True)
    print(f"ready: {path}/bin/python benchmarks/vs_peers.py")


def timed_rounds(sides: dict, work: float, rounds: int, warmup: int = 2) -> dict:
    """sides: name -> a callable doing one unit of work (a step, a generate call). Alternates the sides every round
    (and who goes first), returns name -> {median, min, max} of work / seconds over the rounds, and the median
    count of minor page faults per call: memory the allocator handed back to the kernel and must fault in again,
    kernel time that both sides pay and no FLOP count sees."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    rates = {name: [] for name in sides}
    faults = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            sides[name]()
            rates[name].append(work / (time.perf_counter() - t0))
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {n: {"median": statistics.median(v), "min": min(v), "max": max(v),
                "page_faults": statistics.median(faults[n])} for n, v in rates.items()}


def autocast(precision: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def train_step(model, opt, loss_fn, precision: str):
    def step():
        with autocast(precision):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def stage1_cases(rounds: int, batch: int, precisions: list[str], losses: list[str],
                 compile: bool = False) -> list[dict]:
    import torch

    import peer_models as pm
    from spark_vlm.losses import clip_loss, sparc_loss
    from spark_vlm.training.stage1 import flops_per_sample

    torch.manual_seed(0)
    ours, theirs = pm.spark_dual_encoder().train(), pm.OpenClipSparc().train()
    n_ours, n_theirs = pm.count(ours), pm.count(theirs)
    print(f"stage 1 parameters: spark-vlm {n_ours:,}, open_clip {n_theirs:,} ({n_theirs / n_ours - 1:+.2%}: its "
          f"class token and embedding, no conv/vision-proj bias)")
    assert abs(n_theirs / n_ours - 1) < 0.005, "stage-1 architectures differ"
    px, ids, mask = pm.stage1_batch(batch)

    # Control: both loss implementations agree on the same embeddings (ours through our model's outputs).
    with torch.no_grad():
        out = ours(px, ids, mask)
        a = sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds, out.token_mask,
                       out.logit_scale)["loss"]
        b = pm.peer_loss(dict(out), "sparc")
    print(f"  SPARC loss on the same embeddings: spark-vlm {a.item():.6f}, the paper's pseudo-code {b.item():.6f}")
    assert torch.allclose(a, b, rtol=1e-4), "the two SPARC implementations disagree"

    # --compile: both sides torch.compile'd (stage 1's train.compile; open_clip's --torchcompile), timed after the
    # warm-up rounds have compiled them.
    run_ours, run_theirs = (torch.compile(ours), torch.compile(theirs)) if compile else (ours, theirs)

    def our_loss(loss):
        def fn():
            o = run_ours(px, ids, mask)
            if loss == "clip":
                return clip_loss(o.image_embeds, o.text_embeds, o.logit_scale)
            return sparc_loss(o.image_embeds, o.text_embeds, o.patch_embeds, o.token_embeds, o.token_mask,
                              o.logit_scale)["loss"]
        return fn

    rows = []
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    for loss in losses:
        for precision in precisions:
            res = timed_rounds({"spark-vlm": train_step(ours, opt_o, our_loss(loss), precision),
                                "open_clip": train_step(theirs, opt_t,
                                                        lambda: pm.peer_loss(run_theirs(px, ids, mask), loss),
                                                        precision)}, batch, rounds)
            case = f"stage 1 {loss} {precision}" + (" compiled" if compile else "")
            rows.append(dict(case=case, unit="samples/s", ours=res["spark-vlm"], peer_name="open_clip",
                             peer=res["open_clip"], flops_per_sample=flops_per_sample(ours)))
            print(f"  {rows[-1]['case']}: {res}", flush=True)
    return rows


def stage2_cases(rounds: int, batch: int, length: int, precisions: list[str]) -> list[dict]:
    import torch

    import peer_models as pm

    ours = pm.spark_captioner()
    theirs = pm.open_flamingo_captioner(ours)
    counts = {"spark-vlm": (pm.count(ours), pm.count(ours, trainable=True)),
              "open_flamingo": (pm.count(theirs), pm.count(theirs, trainable=True))}
    print(f"stage 2 parameters (all, trainable): {counts}; ours trains the 2 new token rows (1,024), theirs not")
    assert counts["spark-vlm"][0] == counts["open_flamingo"][0], "stage-2 architectures differ"
    assert counts["spark-vlm"][1] - counts["open_flamingo"][1] == 4 * pm.STAGE2["lm_width"]
    px, ids, mask, labels = pm.stage2_batch(ours, batch, length)
    ours.train()
    theirs.train()
    theirs.lang_encoder.eval()  # frozen LM: no dropout, as ours
    theirs.vision_encoder.eval()
    opt_o = torch.optim.AdamW(ours.trainable_parameters(), lr=1e-4)
    opt_t = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-4)
    px6 = px[:, :, None]  # open_flamingo: [B, T_img, F, C, H, W]
    rows = []
    for precision in precisions:
        res = timed_rounds({
            "spark-vlm": train_step(ours, opt_o, lambda: ours(px, ids, mask, labels=labels).loss, precision),
            "open_flamingo": train_step(theirs, opt_t, lambda: theirs(px6, ids, mask, labels=labels).loss, precision),
        }, batch, rounds)
        rows.append(dict(case=f"stage 2 {precision}", unit="samples/s", ours=res["spark-vlm"],
                         peer_name="open_flamingo", peer=res["open_flamingo"],
                         flops_per_sample=_stage2_flops(ours, length)))
        print(f"  {rows[-1]['case']}: {res}", flush=True)
    return rows + generation_cases(ours, theirs, px, rounds)


def _stage2_flops(model, length: int) -> float:
    from spark_vlm.training.stage2 import stage2_flops_per_sample

    return stage2_flops_per_sample(model, length)


def generation_cases(ours, theirs, px, rounds: int, batch: int = 16, new: int = 20) -> list[dict]:
    import torch

    ours.eval()
    theirs.eval()
    prompt = torch.tensor([[ours.image_token_id, ours.tokenizer.eos_token_id, 5, 6]]).expand(batch, -1)
    mask = torch.ones_like(prompt)
    px, px6 = px[:batch], px[:batch, :, None]
    lm = theirs.lang_encoder

    def run_ours():
        with torch.no_grad():
            out = ours.generate(px, prompt, mask, max_new_tokens=new, eos_token_id=[])
        assert out.shape == (batch, new), out.shape

    def run_theirs():
        with torch.no_grad():
            out = theirs.generate(px6, prompt, mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        assert out.shape == (batch, prompt.shape[1] + new), out.shape

    lm_prompt = prompt[:, 1:]  # the LM alone: no <image>

    def run_lm():  # open_flamingo's LM with nothing conditioned: its layers would refuse, so use the plain stack
        with torch.no_grad():
            out = plain_lm.generate(lm_prompt, attention_mask=mask[:, 1:], max_new_tokens=new, min_new_tokens=new,
                                    do_sample=False)
        assert out.shape == (batch, lm_prompt.shape[1] + new), out.shape

    def run_visual_prefix():  # what every call of ours does before its first token: tower, resampler, xattn K/V
        with torch.no_grad():
            ours.precompute_visual_kv(ours.visual_latents(ours.with_media_axis(px)))

    plain_lm = _plain_lm(ours)
    res = timed_rounds({"spark-vlm": run_ours, "open_flamingo": run_theirs, "LM alone": run_lm,
                        "visual prefix": run_visual_prefix}, batch * new, rounds, warmup=1)
    print(f"  generation: {res}", flush=True)
    return [dict(case="generation (greedy, 16 x 20 tokens)", unit="tokens/s", ours=res["spark-vlm"],
                 peer_name="open_flamingo", peer=res["open_flamingo"], lm_alone=res["LM alone"],
                 visual_prefix=res["visual prefix"], work=batch * new)]


def generation_ceiling(lm_alone_rate: float, prefix_rate: float) -> float:
    """Our generate call's rate if each of its tokens cost no more than the LM alone's: the LM-alone call plus the
    visual prefix. Both rates are the same work (tokens) over their seconds, so the seconds add."""
    return 1 / (1 / lm_alone_rate + 1 / prefix_rate)


def _plain_lm(ours):
    import peer_models as pm

    lm = pm._llama(ours.lm_vocab_size, ours.tokenizer)
    lm.load_state_dict(ours.frozen_lm_state_dict())
    return lm


def peak_flops(precision: str) -> float:
    import torch

    from spark_vlm.training.throughput import measure_peak_flops

    return measure_peak_flops(torch.device("cpu"), torch.bfloat16 if precision == "bf16" else torch.float32)


def table(rows: list[dict], peaks: dict) -> str:
    lines = ["| case | peer | peer (median, min-max) | spark-vlm (median, min-max) | ratio | MFU ours / peer "
             "| page faults per call ours / peer |", "|---|---|---:|---:|---:|---:|---:|"]
    fmt = lambda r: f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f})"  # noqa: E731
    for row in rows:
        mfu = ""
        if "flops_per_sample" in row:
            peak = peaks["bf16" if " bf16" in row["case"] else "fp32"]
            mfu = f"{row['ours']['median'] * row['flops_per_sample'] / peak:.1%} / " \
                  f"{row['peer']['median'] * row['flops_per_sample'] / peak:.1%}"
        lines.append(f"| {row['case']} ({row['unit']}) | {row['peer_name']} | {fmt(row['peer'])} | {fmt(row['ours'])} "
                     f"| {row['ours']['median'] / row['peer']['median']:.2f}x | {mfu} "
                     f"| {row['ours']['page_faults']:.0f} / {row['peer']['page_faults']:.0f} |")
        if "lm_alone" in row:
            lm = row["lm_alone"]["median"]
            lines.append(f"| the LM alone (HF generate) | | | {fmt(row['lm_alone'])} | ours at "
                         f"{row['ours']['median'] / lm:.0%} of it, open_flamingo at {row['peer']['median'] / lm:.0%} "
                         f"| | {row['lm_alone']['page_faults']:.0f} |")
            prefix = row["visual_prefix"]["median"]
            ceiling = generation_ceiling(lm, prefix)
            lines.append(f"| ceiling: the LM alone + our visual prefix ({row['work'] / prefix * 1e3:.0f} ms per call) "
                         f"| | | {ceiling:.1f} | {ceiling / lm:.0%} of the LM alone | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-venv", metavar="DIR", help="create the benchmark environment in DIR and exit")
    parser.add_argument("--only", choices=["stage1", "stage2"], help="one stage only (stage 2 includes generation)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the run is pinned to one core)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where the CPU has fast bf16 matmuls (training/throughput.py)")
    parser.add_argument("--compile", action="store_true", help="stage 1 with both models torch.compile'd")
    parser.add_argument("--out", default="benchmarks/results/vs_peers.json")
    args = parser.parse_args()
    if args.make_venv:
        return make_venv(args.make_venv)
    try:
        import open_clip  # noqa: F401
        import open_flamingo  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: {e.name} is not installed in {sys.executable}; run with the benchmark environment "
                 f"(python benchmarks/vs_peers.py --make-venv DIR)")
    import torch

    from spark_vlm.training.throughput import fast_bf16

    torch.set_num_threads(args.threads)
    if args.precisions is None:  # emulated bf16 (AVX2-only CPUs) runs ~8x slower than fp32: not worth timing
        args.precisions = ["fp32", "bf16"] if fast_bf16(torch.device("cpu")) else ["fp32"]
    t0 = time.perf_counter()
    rows = []
    if args.only in (None, "stage1"):
        rows += stage1_cases(args.rounds, 64, args.precisions, ["sparc", "clip"], args.compile)
    if args.only in (None, "stage2"):
        rows += stage2_cases(args.rounds, 16, 32, args.precisions)
    peaks = {p: peak_flops(p) for p in ("fp32", "bf16")}
    md = table(rows, peaks)
    print(f"\nmatmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s\n\n{md}")
    import open_clip as oc
    import transformers

    allocator_env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    meta = {"command": " ".join([*allocator_env, "python", *sys.argv]), "torch": torch.__version__,
            "threads": args.threads,
            "open_clip": oc.__version__, "transformers": transformers.__version__, "rounds": args.rounds,
            "machine": platform.processor() or platform.machine(), "seconds": round(time.perf_counter() - t0),
            "peak_flops": peaks}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(f"`{meta['command']}` (torch {meta['torch']}, {args.threads} thread(s), "
                                      f"{args.rounds} rounds)\n\n{md}\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
