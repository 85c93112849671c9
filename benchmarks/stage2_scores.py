"""Score stage-2 runs on the held-out built-in test scenes, every number beside its control, the oracle included.

    python benchmarks/stage2_scores.py --runs runs/stage2 /work/exp/oracle --out benchmarks/results/stage2_scores.json

For each run directory (a real backbone or `vision_checkpoint=oracle`): greedy captions of the first N test
scenes -> CHAIRs / CHAIRi with the scenes' synonyms beside the blind baseline (each image given another image's
reference caption), POPE accuracy per setting (random / popular / adversarial; zero-shot and few-shot), and the
run's own final controls from eval_results.json (val caption loss with own / another / blank image, text-only,
image contribution, distinct captions). The oracle reads the scenes' ground-truth object tokens instead of pixels,
which is why this is a script over the library rather than the file-based eval/ CLIs (which give the same numbers
for a real backbone: the same functions run underneath).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from spark_vlm.data.coco_export import export_coco
from spark_vlm.data.oracle_tokens import scenes_tokens
from spark_vlm.data.scenes import SceneConfig, cached_scenes
from spark_vlm.evaluation.captioner import caption_images, load_captioner
from spark_vlm.evaluation.captioning import chair_report
from spark_vlm.evaluation.pope import answer_pope, choose_shots, instance_questions
from spark_vlm.metrics.pope import SETTINGS, pope_scores
from spark_vlm.models.oracle_vision import OracleVision

CONTROLS = ("val_caption_loss", "val_caption_loss_shuffled_images", "val_caption_loss_blank_image",
            "val_caption_loss_text_only", "image_contribution", "distinct_captions",
            "val_object_word_loss", "val_object_word_loss_shuffled_images", "object_word_contribution")


def model_inputs(model, num_images: int) -> tuple[np.ndarray, list[int]]:
    """The test scenes as the run's vision tower reads them: pixels, or ground-truth object tokens (oracle)."""
    oracle = isinstance(model.vision, OracleVision)
    size = model.vision.config.image_size
    scenes = cached_scenes("test", num_images, size, max_objects=model.vision.config.max_objects if oracle else 6)
    images, _, ids = scenes.arrays()
    return (scenes_tokens(scenes, model.vision.config.max_objects) if oracle else images), ids


def score_run(run_dir: str, annotations: dict, num_images: int, pope_images: int, shots: list[int], seed: int) -> dict:
    torch.manual_seed(seed)
    model, prompts = load_captioner(run_dir)
    inputs, ids = model_inputs(model, num_images)
    captions = caption_images(model, prompts, inputs, batch_size=50, progress=False, max_new_tokens=30)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        results.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in zip(ids, captions)]))
        chair = chair_report(str(results), annotations["captions"], annotations["instances"], annotations["synonyms"],
                             blind_seed=seed).result
    by_id = dict(zip(ids, inputs))
    questions, _ = instance_questions(annotations["instances"], SETTINGS, pope_images, seed)
    pope = {}
    for k in shots:
        for setting, qs in questions.items():
            answers = answer_pope(model, prompts, qs, choose_shots(qs, k, seed), by_id, batch_size=32)
            pope[f"{setting}_{k}shot"] = pope_scores(qs, answers)
    final = json.loads((Path(run_dir) / "eval_results.json").read_text())
    return {"run": str(run_dir), "oracle": isinstance(model.vision, OracleVision), "examples": captions[:5],
            "distinct_test_captions": len(set(captions)) / len(captions),
            "CHAIRi": chair["CHAIRi"], "CHAIRs": chair["CHAIRs"],
            "objects_per_caption": chair["mean_objects_per_caption"],
            "blind_CHAIRi": chair["blind_baseline"]["CHAIRi"], "blind_CHAIRs": chair["blind_baseline"]["CHAIRs"],
            "blind_objects_per_caption": chair["blind_baseline"]["mean_objects_per_caption"],
            "pope": pope, **{k: final.get(k) for k in CONTROLS}, "step": final.get("step")}


def object_words(r: dict) -> str:
    if r.get("object_word_contribution") is None:  # a run from before the object-word controls
        return "–"
    return (f"{r['val_object_word_loss']:.3f} / {r['val_object_word_loss_shuffled_images']:.3f} "
            f"({r['object_word_contribution']:+.3f})")


def table(rows: list[dict]) -> str:
    pope_keys = sorted(rows[0]["pope"])
    head = ["run", "CHAIRi (blind)", "CHAIRs (blind)", "obj/cap", "distinct", "own / other / blank / text-only",
            "image contrib.", "object words own / another (contrib.)"] + [f"POPE {k}" for k in pope_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        losses = " / ".join(f"{r[k]:.3f}" for k in CONTROLS[:4])
        cells = [Path(r["run"]).name + (" (oracle)" if r["oracle"] else ""),
                 f"{r['CHAIRi']:.1f} ({r['blind_CHAIRi']:.1f})", f"{r['CHAIRs']:.1f} ({r['blind_CHAIRs']:.1f})",
                 f"{r['objects_per_caption']:.2f}", f"{100 * r['distinct_test_captions']:.0f}%", losses,
                 f"{r['image_contribution']:+.3f}", object_words(r)] + [f"{r['pope'][k]['accuracy']:.1f}"
                                                                       for k in pope_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="stage-2 run directories")
    parser.add_argument("--num-images", type=int, default=500, help="test scenes captioned for CHAIR")
    parser.add_argument("--pope-images", type=int, default=500, help="test scenes with >= 3 objects asked about")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 2], help="POPE few-shot settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes-dir", default="runs/scenes_test", help="where the test scenes' COCO export lives")
    parser.add_argument("--out", default="benchmarks/results/stage2_scores.json")
    args = parser.parse_args(argv)
    annotations = export_coco(args.scenes_dir, "test", args.num_images, SceneConfig())
    rows = [score_run(r, annotations, args.num_images, args.pope_images, args.shots, args.seed) for r in args.runs]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print("\n".join(f"{Path(r['run']).name}: " + " | ".join(r["examples"][:3]) for r in rows))
    return rows


if __name__ == "__main__":
    main()
