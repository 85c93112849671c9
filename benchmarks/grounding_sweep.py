"""Which objective grounds words in their regions? Trains the tiny stage-1 config with CLIP, FILIP, the paper's SPARK
loss and SPARK with each fine-grained option (issue 9), several seeds each, then scores every run with the grounding
evaluation (words -> ground-truth masks), retrieval and the fine-grained probes, and writes

    OUT/sweep.md      mean +- std over seeds, each number beside its uniform / position-only / blank-image baseline
                      and CLIP's
    OUT/sweep.json    every run's scores
    OUT/sweep.png     mass-in-mask over training steps per objective (the periodic eval's grounding), or, for runs
                      without it, the final values with error bars
    OUT/heatmaps.png  a shape word's alignment weights on the same 3 test scenes, one row per objective (seed 0)

    python benchmarks/grounding_sweep.py                          # every variant x 3 seeds, 400 x 64 (the default): hours of CPU
    python benchmarks/grounding_sweep.py --variants sparc sparc+centre --seeds 1 --steps 150 --batch-size 64

Resumable: a run with its final evaluation written is not retrained (an interrupted one resumes from its latest
checkpoint), and its scores are cached next to it (OUT/<variant>/seed<N>/sweep_scores.json). A run directory
trained with other steps or batch size is refused, not mixed in: use another --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spark_vlm.experiments.runs import RunError, mismatches, train
from spark_vlm.experiments.stage1_scores import BASELINES, stage1_scores
from spark_vlm.experiments.study_plots import heatmap_grid
from spark_vlm.experiments.study_report import mean_std as stats
from spark_vlm.experiments.variants import VARIANTS
from spark_vlm.training.stage1_config import Stage1Config


def train_run(run_dir: Path, overrides: list[str], seed: int, args) -> None:
    """Train (or finish training) one run; a run whose final evaluation exists is left as it is."""
    shape = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}"]
    found = mismatches(run_dir, shape)
    if found:
        steps, batch = (found.get(k, (w,))[0] for k, w in (("train.max_steps", args.steps),
                                                           ("train.batch_size", args.batch_size)))
        raise RunError(f"{run_dir} was trained with max_steps={steps} batch_size={batch}, not {args.steps} x "
                       f"{args.batch_size}; use another --out")
    if not (run_dir / "eval_results.json").exists():
        print(f"training {run_dir} ...", flush=True)
    train(1, run_dir, [*overrides, f"train.seed={seed}", *shape, f"train.eval_every={args.eval_every}",
                       *args.override])


def score_run(run_dir: Path, num_images: int) -> dict[str, float]:
    """stage1_scores of one run, cached in the run dir."""
    cache = run_dir / "sweep_scores.json"
    if cache.exists() and json.loads(cache.read_text()).get("num_images") == num_images:
        return json.loads(cache.read_text())
    scores = stage1_scores(run_dir, num_images)
    cache.write_text(json.dumps(scores, indent=2))
    return scores


def mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    return stats(r[key] for r in runs)


def cell(runs: list[dict], key: str, digits: int = 1) -> str:
    mean, std = mean_std(runs, key)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(scores: dict[str, list[dict]], args) -> str:
    """Two tables: grounding with its baselines and CLIP's, then the shortcut diagnostics, retrieval and probes."""
    clip = scores.get("clip")
    lines = [f"# Grounding sweep: {args.steps} steps x batch {args.batch_size}, seeds {args.seeds}, "
             f"{args.num_images} test scenes (mean ± std over seeds)", "",
             "Mass-in-mask and pointing (%) of the shape and colour words' alignment weights on their objects' masks, "
             "beside what ignores the image: uniform weights, the position code alone (the mean patch embeddings), "
             "a blank grey image; then weights on every object alike, whatever the word names (any object: what "
             "telling objects from the background earns without grounding the word); the difference from CLIP's "
             "mean; and the model read centred (each patch minus its position's mean over the test images).", "",
             "| variant | mass-in-mask | uniform / position-only / blank / any object | − CLIP | centred | pointing | "
             "uniform / position-only / blank / any object | − CLIP | centred |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in scores.items():
        row = [name]
        for measure in ("mass_in_mask", "pointing"):
            row.append(cell(runs, f"model.{measure}"))
            row.append(" / ".join(f"{mean_std(runs, f'{b}.{measure}')[0]:.1f}" for b in BASELINES))
            row.append(f"{mean_std(runs, f'model.{measure}')[0] - mean_std(clip, f'model.{measure}')[0]:+.1f}"
                       if clip else "-")
            row.append(cell(runs, f"model_centred.{measure}"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "The fine-grained loss L_f with the matched image beside a blank image and the position code alone "
              "(grounding needs matched clearly lower), the share of patch variance that position explains, "
              "retrieval R@1 (%) and the probes' mean accuracy (%) beside a blank image's.", "",
              "| variant | L_f matched | L_f blank / position-only | position share | t→i R@1 | i→t R@1 | "
              "truth-aware t→i R@1 | probes | probes, blank image |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in scores.items():
        lines.append("| " + " | ".join([
            name, cell(runs, "fine_loss_matched", 3),
            f"{mean_std(runs, 'fine_loss_blank_image')[0]:.3f} / {mean_std(runs, 'fine_loss_position_only')[0]:.3f}",
            cell(runs, "position_variance_share", 2), cell(runs, "t2i_R@1"), cell(runs, "i2t_R@1"),
            cell(runs, "truth_R@1"), cell(runs, "probes"), cell(runs, "probes.blank_image")]) + " |")
    return "\n".join(lines) + "\n"


def curves(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    """(steps, mass-in-mask %, uniform weights' %) from the periodic evaluation's records, empty when it logged no
    grounding."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    evals = [r for r in records if r.get("kind") == "eval" and "grounding_mass_in_mask" in r]
    return ([r["step"] for r in evals], [r["grounding_mass_in_mask"] for r in evals],
            [r["grounding_mass_in_mask_uniform"] for r in evals])


def plot(scores: dict[str, list[dict]], run_dirs: dict[str, list[Path]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.5))
    uniform = []
    for name, dirs in run_dirs.items():
        runs = [curves(d) for d in dirs]
        if runs and all(steps and steps == runs[0][0] for steps, _, _ in runs):
            values = np.array([v for _, v, _ in runs])
            ax_curve.errorbar(runs[0][0], values.mean(0), yerr=values.std(0), label=name, capsize=3)
            uniform += [u for _, _, us in runs for u in us]
    if uniform:  # the same held-out words for every run: one line
        ax_curve.axhline(np.mean(uniform), color="grey", linestyle=":", label="uniform weights")
    ax_curve.set(xlabel="step", ylabel="mass-in-mask (%), held-out scenes", title="during training")
    if ax_curve.lines:
        ax_curve.legend()
    names = list(scores)
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "model.mass_in_mask", "mass-in-mask"), (0.2, "model.pointing", "pointing")):
        stats = [mean_std(scores[n], key) for n in names]
        ax_bar.bar(x + offset, [m for m, _ in stats], 0.4, yerr=[s for _, s in stats], capsize=3, label=label)
    for key, style in (("uniform.mass_in_mask", ":"), ("uniform.pointing", "--")):
        ax_bar.axhline(np.mean([r[key] for runs in scores.values() for r in runs]), color="grey", linestyle=style,
                       label=key.replace(".", " "))
    ax_bar.set_xticks(x, names, rotation=20)
    ax_bar.set(ylabel="%", title="final, test scenes (mean ± std over seeds)")
    ax_bar.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/grounding_sweep", help="sweep directory (runs, tables, plot)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    tiny = Stage1Config().train
    parser.add_argument("--steps", type=int, default=tiny.max_steps, help="optimiser steps (default: the tiny config's)")
    parser.add_argument("--batch-size", type=int, default=tiny.batch_size, help="default: the tiny config's")
    parser.add_argument("--eval-every", type=int, default=100, help="periodic held-out evaluation (0 = at the end)")
    parser.add_argument("--num-images", type=int, default=500, help="test scenes for the final scores")
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value for every run (e.g. a smaller "
                        "model for a quick check)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1 or args.batch_size < 2 or args.num_images < 2:
        parser.error("--seeds and --steps must be >= 1, --batch-size and --num-images >= 2")

    out = Path(args.out)
    run_dirs = {name: [out / name / f"seed{seed}" for seed in range(args.seeds)] for name in args.variants}
    try:
        for name, dirs in run_dirs.items():
            for seed, run_dir in enumerate(dirs):
                train_run(run_dir, VARIANTS[name], seed, args)
        scores = {name: [score_run(d, args.num_images) for d in dirs] for name, dirs in run_dirs.items()}
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (out / "sweep.json").write_text(json.dumps({"args": vars(args), "scores": scores}, indent=2))
    (out / "sweep.md").write_text(markdown(scores, args))
    plot(scores, run_dirs, out / "sweep.png")
    heatmap_grid(out / "heatmaps.png", {name: str(dirs[0]) for name, dirs in run_dirs.items()})
    print((out / "sweep.md").read_text() + f"wrote {out}/sweep.md, sweep.json, sweep.png, heatmaps.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
