"""The study's plots (matplotlib, Agg), each from the runs' own files: training curves (metrics.jsonl), the stage-1
scores with error bars over seeds, CHAIRi against CIDEr per backbone, and the alignment heatmaps of the same test
scenes under each stage-1 backbone (evaluation/alignment.py, as eval/visualize.py draws them)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .study_config import StudyConfig
from .study_report import mean_std

HEATMAP_SCENES = (0, 1, 2)  # test scenes shown under every backbone


def train_curve(run_dir) -> dict[int, float]:
    """{step: training loss} from a run's metrics.jsonl (the training records, not the evaluations). For SPARC its
    global (CLIP) part, so that CLIP and SPARC runs share a scale; FILIP's is its own loss."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r.get("global_loss", r["loss"]) for r in records if "kind" not in r and "loss" in r}


def _curves(ax, runs: dict[str, list[str]], title: str) -> None:
    for label, dirs in runs.items():
        curves = [train_curve(d) for d in dirs]
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if steps:
            values = np.array([[c[s] for s in steps] for c in curves])
            ax.plot(steps, values.mean(0), label=label)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set(xlabel="step", ylabel="training loss", title=title)
    if ax.lines:
        ax.legend(fontsize=7)


def _bars(ax, stage1: dict, key: str, control: str | None, title: str) -> None:
    names = list(stage1)
    stats = [mean_std([r[key] for r in stage1[n]]) for n in names]
    ax.bar(range(len(names)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3)
    if control:
        ax.axhline(np.mean([r[control] for runs in stage1.values() for r in runs]), color="grey", linestyle=":",
                   label=control.replace(".", " "))
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set(ylabel="%", title=title)


def _save(fig, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def heatmap_grid(path: Path, runs: dict[str, str]) -> None:
    """One row per run (label -> stage-1 run dir): a shape word's alignment weights on test scenes 0-2 (the first
    caption of each), drawn as eval/visualize.py draws them."""
    import matplotlib.pyplot as plt

    from ..data.scenes import SceneConfig, generate_scene
    from ..evaluation.alignment import alignment_maps, draw_overlay
    from ..evaluation.stage1_run import load_stage1_run
    from ..metrics.grounding import named_words

    fig, axes = plt.subplots(len(runs), len(HEATMAP_SCENES), figsize=(2.8 * len(HEATMAP_SCENES), 2.7 * len(runs)),
                             squeeze=False)
    for row, (label, run_dir) in enumerate(runs.items()):
        model, tok = load_stage1_run(run_dir)
        size, grid = model.config.image_size, model.config.image_size // model.config.patch_size
        for col, index in enumerate(HEATMAP_SCENES):
            scene = generate_scene(SceneConfig(image_size=size), "test", index)
            caption = scene["captions"][0]
            maps, pieces = alignment_maps(model, tok, scene["image"], caption)
            words = [w for w in named_words(pieces, scene["objects"], grid) if w[0] == "shape"] or \
                named_words(pieces, scene["objects"], grid)
            positions = words[0][1] if words else list(range(len(pieces)))
            word = "".join(pieces[p] for p in positions).replace("▁", "").replace("Ġ", "").strip(",.;:")
            # the run's label heads its row (first column), so long variant names do not run into each other
            draw_overlay(axes[row, col], scene["image"], maps[positions].mean(0),
                         f"{label}\n'{word}'" if col == 0 else f"\n'{word}'")
    fig.suptitle("alignment weights of a shape word (test scenes 0-2; seed 0 of each backbone)", fontsize=9)
    _save(fig, path.parent, path.name)


def write_plots(cfg: StudyConfig, results: dict, out: Path) -> list[str]:
    """Writes the PNGs into `out`; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    _curves(a1, {k: v for k, v in results["stage1_runs"].items() if k in cfg.objectives},
            "stage 1: contrastive loss (SPARC: its global part)\nmean over seeds, band = min..max")
    _curves(a2, results["stage2_runs"], "stage 2")
    names.append(_save(fig, out, "training_curves.png"))

    stage1 = results["stage1"]
    if stage1:
        fig, axes = plt.subplots(1, 3, figsize=(13, 5))
        for ax, (key, control, title) in zip(axes, [("model.mass_in_mask", "uniform.mass_in_mask", "mass-in-mask"),
                                                    ("probes", "probes.blank_image", "probes"),
                                                    ("mIoU.paper", None, "mIoU (paper protocol)")]):
            _bars(ax, stage1, key, control, title)
        fig.suptitle("stage 1 on the test scenes: mean ± std over seeds (ablations: one seed)", fontsize=9)
        names.append(_save(fig, out, "stage1_scores.png"))

    stage2 = results["stage2"]
    if stage2:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for label, runs in stage2.items():
            (x, xs), (y, ys) = mean_std([r["CIDEr"] for r in runs]), mean_std([r["CHAIRi"] for r in runs])
            ax.errorbar(x, y, xerr=xs, yerr=ys, fmt="o", capsize=3, label=label)
        blind = [r for runs in stage2.values() for r in runs]
        ax.plot(np.mean([r["blind_CIDEr"] for r in blind]), np.mean([r["blind_CHAIRi"] for r in blind]), "kx",
                label="blind baseline")
        ax.set(xlabel="CIDEr (higher is better)", ylabel="CHAIRi (lower is better)", title="stage 2 per backbone")
        ax.legend(fontsize=7)
        names.append(_save(fig, out, "chair_vs_cider.png"))

    backbones = {label: dirs[0] for label, dirs in results["stage1_runs"].items() if label in cfg.objectives}
    if backbones:
        heatmap_grid(out / "heatmaps.png", backbones)
        names.append("heatmaps.png")
    return names
