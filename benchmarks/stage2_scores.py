"""Score stage-2 runs on the held-out built-in test scenes, every number beside its control, the oracle included.

    python benchmarks/stage2_scores.py --runs runs/stage2 /work/exp/oracle --out benchmarks/results/stage2_scores.json

For each run directory (a real backbone or `vision_checkpoint=oracle`) the scores of
spark_vlm/experiments/stage2_scores.py: CIDEr (and BLEU-4 / ROUGE-L in the JSON) and CHAIRs / CHAIRi
beside the blind baseline (each image given another image's reference caption), POPE accuracy per setting
(random / popular / adversarial; zero-shot and few-shot), and the run's own final controls from eval_results.json
(val caption loss with own / another / blank image, text-only, image contribution, distinct captions).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spark_vlm.data.coco_export import export_coco
from spark_vlm.data.scenes import SceneConfig
from spark_vlm.experiments.stage2_scores import CONTROLS, stage2_scores


def object_words(r: dict) -> str:
    if r.get("object_word_contribution") is None:  # a run from before the object-word controls
        return "–"
    return (f"{r['val_object_word_loss']:.3f} / {r['val_object_word_loss_shuffled_images']:.3f} "
            f"({r['object_word_contribution']:+.3f})")


def table(rows: list[dict]) -> str:
    pope_keys = sorted(rows[0]["pope"])
    head = ["run", "CIDEr (blind)", "CHAIRi (blind)", "CHAIRs (blind)", "obj/cap", "distinct", "own / other / blank / text-only",
            "image contrib.", "object words own / another (contrib.)"] + [f"POPE {k}" for k in pope_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        losses = " / ".join(f"{r[k]:.3f}" for k in CONTROLS[:4])
        cells = [Path(r["run"]).name + (" (oracle)" if r["oracle"] else ""), f"{r['CIDEr']:.1f} ({r['blind_CIDEr']:.1f})",
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
    rows = [stage2_scores(r, annotations, args.num_images, args.pope_images, args.shots, args.seed) for r in args.runs]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print("\n".join(f"{Path(r['run']).name}: " + " | ".join(r["examples"][:3]) for r in rows))
    return rows


if __name__ == "__main__":
    main()
