"""The study's report: <output_dir>/results.md (paper-style tables), results.json (every run's scores) and the
plots (study_plots.py). Every number is read from a step's result file; the only figures written here are the
paper's, cited. Over seeds: mean ± sample std (ddof 1); a difference to CLIP counts as outside the seed spread
when |mean − CLIP's mean| > std + CLIP's std (both with >= 2 seeds), a deliberately plain rule, not a test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .plan import Step, write_json
from .study_config import StudyConfig

RULE = ("▲ / ▼: above / below CLIP by more than the two seed spreads together (|mean − CLIP's mean| > std + CLIP's "
        "std, sample std over seeds); no mark: inside the spread (or one seed: no spread to compare).")
# Stage 1: (key, header, its control's key and name, or None[, digits])
STAGE1 = [("i2t_R@1", "i→t R@1", None), ("t2i_R@1", "t→i R@1", None),
          ("truth_R@1", "truth-aware t→i R@1", ("truth_R@1_chance", "chance")),
          ("i2t_truth_R@1", "truth-aware i→t R@1", None),
          ("probes", "probes", ("probes.blank_image", "blank image")), ("K-P", "K-Precision", None)]
GROUNDING = [("model.mass_in_mask", "mass-in-mask", ("uniform.mass_in_mask", "uniform")),
             ("model.pointing", "pointing", ("uniform.pointing", "uniform")),
             ("model.mass_in_mask", "mass-in-mask vs position-only", ("position_only.mass_in_mask", "position-only")),
             ("mIoU.paper", "mIoU, paper protocol", None), ("mIoU.standard", "mIoU, standard protocol", None)]
STAGE2 = [("CIDEr", "CIDEr", ("blind_CIDEr", "blind")), ("Bleu_4", "BLEU-4", ("blind_Bleu_4", "blind")),
("ROUGE_L", "ROUGE-L", ("blind_ROUGE_L", "blind")),
          ("CHAIRs", "CHAIRs ↓", ("blind_CHAIRs", "blind")), ("CHAIRi", "CHAIRi ↓", ("blind_CHAIRi", "blind")),
          ("pope_random", "POPE random acc.", None),
          ("pope_statement_random", "POPE random acc., from captions",
           ("pope_statement_random_another", "another image")),
          ("image_contribution", "image contribution (nats/token)", None, 3),
          ("object_word_contribution", "object-word contribution", None, 3)]
# The paper's CLIP -> SPARC deltas (Bica et al., ICML 2024, arXiv 2401.09865; ViT-B/16, docs/sparc_method.md) and the
# nearest analogue measured here: (what, clip, sparc, stage, key, analogue).
PAPER = [("ImageNet zero-shot top-1", 71.6, 72.6, 1, "probes",
          "probes: zero-shot choice of the true caption among hard negatives (%)"),
         ("COCO i→t R@1", 56.2, 57.6, 1, "i2t_R@1", "test scenes i→t R@1 (%)"),
         ("Pascal VOC mIoU", 23.0, 27.4, 1, "mIoU.paper", "test scenes mIoU, paper protocol (%)"),
         ("COCO CIDEr, Flamingo-style", 24.3, 25.3, 2, "CIDEr", "test scenes CIDEr, stage 2")]


def mean_std(values) -> tuple[float, float]:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def outside_spread(values, reference) -> bool | None:
    """|mean − reference mean| > std + reference std; None when either has fewer than 2 values."""
    if len(values) < 2 or len(reference) < 2:
        return None
    (m, s), (rm, rs) = mean_std(values), mean_std(reference)
    return abs(m - rm) > s + rs


def cell(values, reference=None, digits: int = 1) -> str:
    m, s = mean_std(values)
    text = f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(values) > 1 else "")
    if reference is not None and outside_spread(values, reference):
        text += " ▲" if m > mean_std(reference)[0] else " ▼"
    return text


def flat_stage2(scores: dict) -> dict:
    """stage2_scores' dict with POPE's random-setting accuracies as flat keys: zero-shot question, answered from
    caption likelihoods, and the same with another image's answers (absent in scores from before that form: None)."""
    pope = scores["pope"]
    statement = {k: pope[key]["accuracy"] if key in pope else None for k, key in
                 (("pope_statement_random", "random_statement"),
                  ("pope_statement_random_another", "random_statement_another_image"))}
    return {**scores, "pope_random": pope["random_0shot"]["accuracy"], **statement}


def collect(steps: list[Step]) -> dict:
    """{"stage1": {label: [scores per seed]}, "stage2": {...}, "runs": {stage-kind: {label: [run dirs]}}}."""
    out = {"stage1": {}, "stage2": {}, "stage1_runs": {}, "stage2_runs": {}}
    for s in steps:
        if not s.done():
            continue
        if s.kind == "stage1_eval":
            out["stage1"].setdefault(s.label, []).append(json.loads(s.result.read_text())["scores"])
        elif s.kind == "stage2_eval":
            out["stage2"].setdefault(s.label, []).append(flat_stage2(json.loads(s.result.read_text())["scores"]))
        elif s.kind.endswith("_train"):
            out[f"{s.kind.split('_')[0]}_runs"].setdefault(s.label, []).append(str(s.run_dir))
    return out


def table(rows: dict[str, list[dict]], columns, reference: str | None, digits: int = 1) -> list[str]:
    head = ["run", "seeds"] + [h + (f" ({c[1]})" if c else "") for _, h, c, *_ in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(columns)]
    ref = rows.get(reference) if reference else None
    for label, runs in rows.items():
        cells = [label, str(len(runs))]
        for key, _, control, *own in columns:
            d = own[0] if own else digits
            values = [r.get(key) for r in runs]
            text = cell(values, None if label == reference or ref is None else [r.get(key) for r in ref], d)
            if control:
                text += f" ({mean_std([r.get(control[0]) for r in runs])[0]:.{d}f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ablation_table(stage1: dict) -> list[str]:
    ablations = {k: v for k, v in stage1.items() if k.startswith("ablation ")}
    if not ablations or "sparc" not in stage1:
        return []
    keys = [c for c in STAGE1 + GROUNDING[:2] + GROUNDING[3:4]]
    base = stage1["sparc"][0]  # seed 0, the ablations' seed
    head = ["SPARC (paper's loss), seed 0, with"] + [h for _, h, _ in keys]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys),
             "| nothing changed (the reference) | " + " | ".join(f"{base[k]:.1f}" for k, _, _ in keys) + " |"]
    for label, (run,) in ablations.items():
        lines.append(f"| {label.removeprefix('ablation ')} | " + " | ".join(
            f"{run[k]:.1f} ({run[k] - base[k]:+.1f})" for k, _, _ in keys) + " |")
    return lines


def direction(delta: float, expected_up: bool) -> str:
    return "no change" if delta == 0 else "yes" if (delta > 0) == expected_up else "no"


def paper_table(stage1: dict, stage2: dict) -> list[str]:
    lines = ["| paper: CLIP → SPARC | paper Δ | nearest analogue here | CLIP here | SPARC here | Δ here | "
             "same direction? | outside the seed spread? |", "|---|---:|---|---:|---:|---:|---|---|"]
    for what, clip, sparc, stage, key, analogue in PAPER:
        rows = stage1 if stage == 1 else stage2
        if "clip" not in rows or "sparc" not in rows:
            continue
        a, b = [r[key] for r in rows["clip"]], [r[key] for r in rows["sparc"]]
        delta = mean_std(b)[0] - mean_std(a)[0]
        spread = outside_spread(b, a)
        lines.append(f"| {what} {clip} → {sparc} | {sparc - clip:+.1f} | {analogue} | {cell(a)} | {cell(b)} | "
                     f"{delta:+.1f} | {direction(delta, sparc > clip)} | "
                     f"{'-' if spread is None else 'yes' if spread else 'no'} |")
    if "filip" in stage1 and "clip" in stage1:
        a, b = [r["i2t_R@1"] for r in stage1["clip"]], [r["i2t_R@1"] for r in stage1["filip"]]
        delta = mean_std(b)[0] - mean_std(a)[0]
        spread = outside_spread(b, a)
        lines.append(f"| FILIP below CLIP when trained from scratch | < 0 | FILIP vs CLIP: test scenes i→t R@1 (%) | "
                     f"{cell(a)} | {cell(b)} (FILIP) | {delta:+.1f} | {direction(delta, False)} | "
                     f"{'-' if spread is None else 'yes' if spread else 'no'} |")
    return lines


def markdown(cfg: StudyConfig, results: dict, plots: list[str]) -> str:
    s1 = {k: v for k, v in results["stage1"].items() if not k.startswith("ablation ")}
    stage1, stage2 = (" ".join(items) or "(the tiny defaults)" for items in (cfg.stage1, cfg.stage2))
    lines = [f"# Study `{cfg.name}`: CLIP vs FILIP vs SPARK through both stages", "",
             f"Objectives {', '.join(cfg.objectives)}; seeds 0..{cfg.seeds - 1}; stage-1 overrides `{stage1}`; "
             f"stage-2 overrides `{stage2}`; {cfg.test_scenes} held-out test scenes for every score. Written by "
             "`python -m spark_vlm.experiments.study` from the result files under `results/`; the config is "
             "`study.yaml`. Cells: mean ± std over seeds; in brackets the control named in the header.", "", RULE, "",
             "## Stage 1: retrieval, probes, K-Precision", ""]
    lines += table(s1, STAGE1, "clip")
    lines += ["", "## Stage 1: grounding and segmentation", "",
              "Mass-in-mask and pointing (%) of the shape and colour words' alignment weights on their objects' masks "
              "(beside uniform weights and the position code alone); zero-shot segmentation mIoU (%) under both "
              "protocols (no chance control computed).", ""]
    lines += table(s1, GROUNDING, "clip")
    lines += ["", "## Stage 2: the captioner on each frozen backbone (and the oracle tower, the recipe's upper bound)",
              "", "Caption metrics and CHAIR beside the blind baseline (each image given another image's reference "
              "caption); POPE: random setting, accuracy (%), chance 50, zero-shot with POPE's question and answered "
              "from caption likelihoods (`--answer statement`, beside the same with another image's answers); the "
              "image and object-word "
              "contributions: val loss with another image's input minus with the own (nats/token, 0 = the image is "
              "not read).", ""]
    lines += table(results["stage2"], STAGE2, "clip", digits=2)
    abl = ablation_table(results["stage1"])
    if abl:
        lines += ["", "## Ablations of the paper's SPARC (stage 1, seed 0; in brackets the change from the reference)",
                  "", *abl]
    lines += ["", "## The paper's deltas beside this study's",
              "", "The paper: Bica et al., *Improving fine-grained understanding in image-text pre-training*, ICML "
              "2024 (arXiv 2401.09865), ViT-B/16 trained on billions of pairs; here a tiny model on procedural scenes, "
              "so only the direction and rough size can be compared, through the nearest analogue named.", "",
              *paper_table(s1, results["stage2"])]
    lines += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(lines) + "\n"


def write_report(cfg: StudyConfig, steps: list[Step]) -> list[Path]:
    from .study_plots import write_plots

    out = Path(cfg.out)
    results = collect(steps)
    plots = write_plots(cfg, results, out)
    write_json(out / "results.json", {"config": json.loads(json.dumps(cfg.__dict__)), "rule": RULE, **results})
    (out / "results.md").write_text(markdown(cfg, results, plots))
    return [out / "results.md", out / "results.json", *[out / p for p in plots]]
