"""The paper in miniature (issue 14): CLIP vs FILIP vs SPARK through both stages, every score beside its control,
one resumable command.

    python -m spark_vlm.experiments.study --config configs/study_quick.yaml            # a smoke run, ~15 min
    python -m spark_vlm.experiments.study --config configs/study_tiny.yaml --workers 2 # the default study
    python -m spark_vlm.experiments.study --config configs/study_tiny.yaml --dry-run   # the plan and its cost
    python -m spark_vlm.experiments.study --config configs/study_tiny.yaml seeds=5     # key=value overrides

The plan (plan.py) trains each stage-1 objective per seed, scores it, trains stage 2 on it and scores that; the
ablations (stage 1 only, seed 0) and the oracle's stage 2 join it. Every step writes its result file last, so a
rerun skips what is done and a killed study resumes (a killed trainer resumes from its latest checkpoint). The
study's config is saved in its output directory; a rerun with another config there is refused, not mixed in.
At the end: <output_dir>/results.md, results.json and the plots (study_report.py, study_plots.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..training.config import ConfigError, save_config, to_dict
from .plan import Step, build_plan, describe, write_json
from .runs import REPO, RunError, mismatches, train
from .study_config import StudyConfig, load_study


def check_output_dir(cfg: StudyConfig) -> None:
    """The output directory holds one study: refuse another config's results rather than mix them."""
    saved = Path(cfg.out) / "study.yaml"
    if saved.exists():
        old, new = yaml.safe_load(saved.read_text()), json.loads(json.dumps(to_dict(cfg)))
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise RunError(f"{cfg.out} holds a study with another config ({', '.join(changed)} differ from "
                           f"{saved}); use another name or output_dir")


def execute(step: Step, cfg: StudyConfig, core: int | None, annotations: dict | None) -> None:
    start = time.time()
    if step.kind.endswith("_train"):
        found = mismatches(step.run_dir, step.overrides)
        if found:
            key, (saved, wanted) = next(iter(found.items()))
            raise RunError(f"{step.run_dir} was trained with {key}={saved}, not {wanted}; delete it or use another "
                           "output_dir")
        train(1 if step.kind == "stage1_train" else 2, step.run_dir, step.overrides, core, cfg.launcher)
        final = json.loads((step.run_dir / "eval_results.json").read_text())
        write_json(step.result, {"label": step.label, "seed": step.seed, "run_dir": str(step.run_dir),
                                 "overrides": step.overrides, "seconds": time.time() - start, "final": final})
        return
    stage = step.kind.split("_")[0]
    pin = ["taskset", "-c", str(core)] if core is not None else []
    cmd = [*pin, sys.executable, "-m", "spark_vlm.experiments.score", stage, str(step.run_dir), "--out",
           str(step.result), "--test-scenes", str(cfg.test_scenes),
           *(["--annotations", json.dumps(annotations)] if stage == "stage2" else [])]
    log = step.run_dir / "score.log"
    with open(log, "a") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode != 0 or not step.done():
            raise RunError(f"scoring {step.run_dir} failed; see {log}")


def run_steps(steps: list[Step], cfg: StudyConfig, workers: int) -> None:
    """Every step not done, each once its inputs are, `workers` at a time (each pinned to its own core when more
    than one). One bar over the whole plan in estimated seconds: its rate, and so its ETA, is measured."""
    todo = [s for s in steps if not s.done()]
    if not todo:
        return
    annotations = None
    if any(s.kind == "stage2_eval" for s in todo):
        from ..data.coco_export import export_coco
        from ..data.scenes import SceneConfig

        annotations = export_coco(str(Path(cfg.out) / "runs" / "scenes_test"), "test", cfg.test_scenes, SceneConfig())
    total = sum(s.estimate_s for s in steps)
    bar = tqdm(total=round(total), initial=round(total - sum(s.estimate_s for s in todo)), smoothing=0,
               bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
    bar.set_description(f"study {cfg.name}: {len(steps) - len(todo)}/{len(steps)} steps")
    cores = list(range(workers)) if workers > 1 else [None]
    running, error, finished = {}, None, len(steps) - len(todo)
    with ThreadPoolExecutor(workers) as pool:
        while (todo and error is None) or running:
            ready = [s for s in todo if all(Path(n).exists() for n in s.needs)] if error is None else []
            for step in ready[:len(cores)]:
                todo.remove(step)
                core = cores.pop(0)
                running[pool.submit(execute, step, cfg, core, annotations)] = (step, core)
            if not running:
                raise RunError(f"no step can start: {todo[0].result} waits on {todo[0].needs}")
            bar.set_postfix_str(", ".join(f"{s.kind} {s.label} seed {s.seed}" for s, _ in running.values()))
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step, core = running.pop(future)
                cores.append(core)
                try:
                    future.result()
                except RunError as e:
                    error = error or e
                    continue
                finished += 1
                bar.set_description(f"study {cfg.name}: {finished}/{len(steps)} steps")
                bar.update(round(step.estimate_s))
    bar.close()
    if error is not None:
        raise error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the study's YAML (configs/study_*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    parser.add_argument("--workers", type=int, default=1, choices=[1, 2],
                        help="steps run at once (2: each subprocess pinned to its own core with taskset)")
    parser.add_argument("overrides", nargs="*", help="key=value over the config (e.g. seeds=1)")
    args = parser.parse_args(argv)
    try:
        cfg = load_study(args.config, args.overrides)
        steps = build_plan(cfg)
        if args.dry_run:
            print(describe(steps))
            return 0
        check_output_dir(cfg)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.out) / "study.yaml")
        run_steps(steps, cfg, args.workers)
        from .study_report import write_report

        written = write_report(cfg, steps)
    except (ConfigError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
